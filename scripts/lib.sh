# Shell helpers shared by the benchmark scripts (sourced, not run).

# A TCP port free on 127.0.0.1 right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until `url` answers (checking every 10 ms, up to 20 s); fails otherwise.
wait_for_url() {
    for _ in $(seq 2000); do
        curl -sf "$1" >/dev/null 2>&1 && return 0
        sleep 0.01
    done
    echo "$1 did not answer in 20 s" >&2
    return 1
}

# Builds larch and larch-bench (release) and sets $larch, $bench and $work, a
# fresh directory named after $1 under $BENCH_DIR (default data/bench, the
# disk larch would use).
bench_setup() {
    cargo build --release --quiet --bins -p larch -p larch-bench
    larch=target/release/larch
    bench=target/release/larch-bench
    local root=${BENCH_DIR:-data/bench}
    mkdir -p "$root"
    work=$(mktemp -d "$root/$1.XXXXXX")
}
