# Shell helpers shared by the benchmark scripts (sourced, not run).

# A TCP port free on 127.0.0.1 right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until `url` answers (up to 20 s); fails otherwise.
wait_for_url() {
    for _ in $(seq 200); do
        curl -sf "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$1 did not answer in 20 s" >&2
    return 1
}
