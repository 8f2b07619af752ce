// The login: a token, checked with GET /tokens/self before it is kept.

import { get, setToken } from "../api.js";
import { fill, h } from "../dom.js";

export function mount(root, { onLogin }) {
  const input = h("input", {
    type: "password",
    id: "token",
    autocomplete: "off",
    placeholder: "cube_…",
    dataset: { testid: "login-token" },
    required: true,
  });
  const error = h("p", { class: "error", dataset: { testid: "login-error" }, hidden: true });
  const submit = h("button", { type: "submit", dataset: { testid: "login-submit" } }, "Log in");
  const form = h(
    "form",
    { class: "login card", onsubmit: (event) => login(event) },
    h("h1", {}, "Log in to Cube"),
    h(
      "p",
      { class: "muted" },
      "This manager wants an API token: its management token (",
      h("code", {}, "cube manager --token"),
      ", or ",
      h("code", {}, ".cube/token"),
      " for a cluster from ",
      h("code", {}, "cube up"),
      ") or one made with ",
      h("code", {}, "cube token create"),
      ". A read token sees everything and changes nothing. It is kept in this tab only.",
    ),
    h("label", { for: "token" }, "Token"),
    input,
    error,
    submit,
  );

  async function login(event) {
    event.preventDefault();
    const secret = input.value.trim();
    submit.disabled = true;
    setToken(secret);
    try {
      await get("/tokens/self");
    } catch (failure) {
      setToken("");
      error.textContent =
        failure.status === 401 ? `Refused: ${failure.message}` : failure.message;
      error.hidden = false;
      submit.disabled = false;
      input.select();
      return;
    }
    await onLogin();
  }

  fill(root, form);
  input.focus();
  return {};
}
