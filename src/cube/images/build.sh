#!/usr/bin/env bash
# Build Cube's offline images from Debian's static busybox: no registry is needed.
#   cube/busybox:latest  a shell and the usual tools (sleep, echo, sh -c ...)
#   cube/http:latest     busybox httpd on port 80 serving /health; GET /cgi-bin/sick
#                        deletes /health so that health checks start failing.
# An image is rebuilt only when its inputs change (a content hash is kept as a label).
set -euo pipefail
cd "$(dirname "$0")"

busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "images: $busybox not found (install busybox-static)" >&2; exit 1; }

hash=$(cat "$busybox" build.sh | sha256sum | cut -c1-16)

current() { docker image inspect -f '{{ index .Config.Labels "cube.image.hash" }}' "$1" 2>/dev/null || true; }

build() {
    local tag=$1; shift
    if [ "$(current "$tag")" = "$hash" ]; then
        return 0
    fi
    local root
    root=$(mktemp -d)
    trap 'rm -rf "$root"' RETURN
    mkdir -p "$root/bin" "$root/tmp" "$root/www/cgi-bin" "$root/etc"
    cp "$busybox" "$root/bin/busybox"
    for applet in $("$busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
    echo ok > "$root/www/health"
    echo '<h1>Hello from Cube</h1>' > "$root/www/index.html"
    cat > "$root/www/cgi-bin/sick" <<'CGI'
#!/bin/sh
rm -f /www/health
printf 'Content-Type: text/plain\r\n\r\nhealth check will now fail\n'
CGI
    chmod +x "$root/www/cgi-bin/sick"
    chmod 1777 "$root/tmp"
    tar -C "$root" -c . | docker import \
        --change "LABEL cube.image.hash=$hash" \
        --change 'ENV PATH=/bin' \
        "$@" - "$tag" >/dev/null
    echo "images: built $tag" >&2
}

build cube/busybox:latest --change 'CMD ["/bin/sh"]'
build cube/http:latest --change 'CMD ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]' --change 'EXPOSE 80/tcp'
