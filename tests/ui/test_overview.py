"""The overview in a real browser: every node the manager knows is listed."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.ui.support import Cluster, login, node_row, node_rows, open_ui, shot

pytestmark = pytest.mark.docker


def test_overview_lists_every_node(cluster: Cluster, page: Page) -> None:
    names = cluster.node_names()
    assert sorted(names) == sorted(w.name for w in cluster.workers)
    open_ui(page, cluster.url)
    login(page, cluster.token)  # tokens are on: the UI asks for one first
    expect(node_rows(page)).to_have_count(len(names))
    for name in names:
        expect(node_row(page, name)).to_be_visible()
    shot(page, "overview")
