# Sourced by the scripts that measure the shipped model over HTTP: builds the
# release binary, starts `cellscope serve` on 127.0.0.1:$PORT in the background
# (its log in $SERVER_LOG, default /dev/null), stops it on exit, and waits until
# it answers. Sets $server to its pid.
cargo build --release --bin cellscope >/dev/null 2>&1
target/release/cellscope serve --addr 127.0.0.1:"$PORT" 2>"${SERVER_LOG:-/dev/null}" &
server=$!
trap 'kill $server 2>/dev/null || true; ${CLEANUP:-true}' EXIT
for _ in $(seq 100); do curl -sf "localhost:$PORT/healthz" >/dev/null && break; sleep 0.2; done
