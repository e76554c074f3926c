#!/usr/bin/env bash
# A complete sealdrop session on loopback: build, start the server on a free
# port, upload a text file as a new client and a 1 MiB binary as a returning
# client, show what the server stored and recorded, check the stored files
# are byte-identical to the originals, and stop the server cleanly.
#
# Run it with `make demo`. Everything happens in a temporary folder that is
# removed at the end; the server is stopped by its PID whatever happens.
# The last line is "demo ok", or "demo FAILED: <reason>" with exit status 1.
#
# Needs: bash, coreutils, cmp, and the Rust toolchain. python3 (or the
# sqlite3 shell) is used to print the database rows; without either the
# script says so and checks the server's log instead.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARGO=${CARGO:-cargo}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER_BIN=$TARGET_DIR/release/sealdrop-server
CLIENT_BIN=$TARGET_DIR/release/sealdrop-client
TEXT_FILE=$ROOT/fixtures/sample/hello.txt
# A seeded random binary of 1 MiB + 1 byte from the golden vectors: no extra
# binary in the repository, the same bytes on every machine, and a length
# that is not a multiple of the AES block.
BINARY_FILE=$ROOT/fixtures/vectors/plain_1048577.bin
# Longest wait for the server to listen and for one client run.
START_TIMEOUT=10
CLIENT_TIMEOUT=60

WORK=""
SERVER_PID=""
FAILED=""

step_no=0
step() {
    step_no=$((step_no + 1))
    printf '\n== %d. %s\n' "$step_no" "$1"
    shift
    local line
    for line in "$@"; do
        printf '   %s\n' "$line"
    done
}

# Prints a file or command output indented, so it stands apart from the headings.
show() { sed 's/^/      | /'; }

fail() {
    FAILED=$1
    exit 1
}

on_error() { [[ -n $FAILED ]] || FAILED="command failed (line $1): $2"; }

cleanup() {
    local status=$?
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ $status -ne 0 && -n $WORK && -s $WORK/server.log ]]; then
        printf '\nlast lines of the server log:\n'
        tail -n 20 "$WORK/server.log" | show
    fi
    [[ -n $WORK ]] && rm -rf "$WORK"
    if [[ $status -eq 0 ]]; then
        echo "demo ok"
    else
        echo "demo FAILED: ${FAILED:-exit status $status}"
    fi
}

trap 'on_error "$LINENO" "$BASH_COMMAND"' ERR
trap cleanup EXIT

# Runs the client in the client folder with no flags, so it reads
# ./transfer.info and keeps me.info / priv.key there.
run_client() {
    local rc=0
    if command -v timeout >/dev/null; then
        (cd "$CLIENT_DIR" && timeout "$CLIENT_TIMEOUT" "$CLIENT_BIN") 2>&1 | show || rc=$?
    else
        (cd "$CLIENT_DIR" && "$CLIENT_BIN") 2>&1 | show || rc=$?
    fi
    [[ $rc -eq 0 ]] || fail "client exited with status $rc (see sealdrop-client --help for the codes)"
}

write_transfer_info() {
    printf '%s\n%s\n%s\n' "$ADDR" "$CLIENT_NAME" "$1" >"$CLIENT_DIR/transfer.info"
    echo "   $CLIENT_DIR/transfer.info:"
    show <"$CLIENT_DIR/transfer.info"
}

# Prints clients(ID hex, Name, LastSeen) and files(ID hex, FileName, Verified)
# and checks them. Never selects PublicKey or AESKey.
show_database() {
    local db=$DATA/defensive.db
    if command -v python3 >/dev/null; then
        python3 - "$db" <<'PY' | show || fail "the database rows are not as expected"
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
clients = db.execute("SELECT hex(ID), Name, LastSeen FROM clients ORDER BY Name").fetchall()
files = db.execute("SELECT hex(ID), FileName, Verified FROM files ORDER BY FileName").fetchall()
print("clients (ID, Name, LastSeen):")
for row in clients:
    print("  " + " | ".join(str(v) for v in row))
print("files (ID, FileName, Verified):")
for row in files:
    print("  " + " | ".join(str(v) for v in row))
if len(clients) != 1:
    sys.exit(f"expected 1 client row, found {len(clients)}")
if len(files) != 2 or any(int(v) != 1 for _, _, v in files):
    sys.exit("expected 2 file rows, both Verified = 1")
PY
    elif command -v sqlite3 >/dev/null; then
        echo "clients (ID, Name, LastSeen):" | show
        sqlite3 -readonly "$db" "SELECT hex(ID), Name, LastSeen FROM clients ORDER BY Name" | show
        echo "files (ID, FileName, Verified):" | show
        sqlite3 -readonly "$db" "SELECT hex(ID), FileName, Verified FROM files ORDER BY FileName" | show
        [[ $(sqlite3 -readonly "$db" "SELECT count(*) FROM clients") == 1 ]] ||
            fail "expected 1 client row"
        [[ $(sqlite3 -readonly "$db" "SELECT count(*) FROM files WHERE Verified = 1") == 2 ]] ||
            fail "expected 2 verified file rows"
    else
        echo "   neither python3 nor sqlite3 is installed: checking the server's log instead"
        grep -F 'outcome=verified' "$WORK/server.log" | show
        [[ $(grep -cF 'outcome=verified' "$WORK/server.log") == 2 ]] ||
            fail "the server's log does not show 2 verified uploads"
    fi
}

step "Build the server and the client (release)" \
    "The demo measures nothing, but release builds generate the RSA key and" \
    "move the 1 MiB file without making you wait."
(cd "$ROOT" && "$CARGO" build --release -p sealdrop-server -p sealdrop-client)
[[ -x $SERVER_BIN && -x $CLIENT_BIN ]] || fail "binaries not found in $TARGET_DIR/release"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sealdrop-demo.XXXXXX")
DATA=$WORK/server-data
CLIENT_DIR=$WORK/client
CLIENT_NAME=demo-alice
mkdir -p "$CLIENT_DIR"
cp "$TEXT_FILE" "$CLIENT_DIR/hello.txt"

step "Start the server on a free port" \
    "--listen 127.0.0.1:0 lets the kernel pick the port; the server logs" \
    "'listening on ADDR:PORT' once the database is open and the socket is bound." \
    "Data directory: $DATA"
env -u RUST_LOG "$SERVER_BIN" --listen 127.0.0.1:0 --data-dir "$DATA" \
    2>"$WORK/server.log" &
SERVER_PID=$!
ADDR=""
for _ in $(seq $((START_TIMEOUT * 10))); do
    kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited during start-up"
    ADDR=$(sed -n 's/.*listening on \([^ ,]*\),.*/\1/p' "$WORK/server.log" | head -n 1)
    [[ -n $ADDR ]] && break
    sleep 0.1
done
[[ -n $ADDR ]] || fail "the server did not log 'listening on' within ${START_TIMEOUT}s"
echo "   server PID $SERVER_PID is listening on $ADDR"

step "Checksums of the two originals" \
    "The protocol's CRC is exactly what POSIX cksum prints first; the server must" \
    "report the same value in its 2103 answer, or the client sends the file again."
(cd "$ROOT" && cksum fixtures/sample/hello.txt fixtures/vectors/plain_1048577.bin) | show

step "First upload: a new client" \
    "No me.info yet, so the client registers (1025 -> 2100), generates an RSA-1024" \
    "key pair and sends the public key (1026 -> 2102, an AES key encrypted for it)," \
    "uploads hello.txt encrypted (1028 -> 2103 with the server's cksum) and" \
    "confirms it (1029 -> 2104). transfer.info: server, client name, file path."
write_transfer_info "hello.txt"
run_client
[[ -s $CLIENT_DIR/me.info && -s $CLIENT_DIR/priv.key ]] ||
    fail "the client did not write me.info and priv.key"
echo "   the client saved its identity (me.info, priv.key):"
(cd "$CLIENT_DIR" && ls -l me.info priv.key) | show
echo "   me.info, first two lines (name, client id); line 3 is the private key and stays hidden:"
head -n 2 "$CLIENT_DIR/me.info" | show
CLIENT_ID=$(sed -n 2p "$CLIENT_DIR/me.info" | tr -d '\r' | tr 'A-F' 'a-f')
[[ $CLIENT_ID =~ ^[0-9a-f]{32}$ ]] || fail "line 2 of me.info is not a 32-digit hex id"

step "Second upload: the same client returns" \
    "me.info exists now, so the client reconnects (1027 -> 2105, a fresh AES key)" \
    "instead of registering. transfer.info now names the binary by a full path;" \
    "the server stores only its base name."
write_transfer_info "$BINARY_FILE"
run_client
grep -q 'reconnect accepted' "$WORK/server.log" ||
    fail "the server's log shows no accepted reconnect (1027 -> 2105)"

step "What the server logged" \
    "One line per connection event and one summary line per upload. Keys and" \
    "file contents never reach the log."
show <"$WORK/server.log"

step "What the server stored" \
    "files/<client id hex>/<base name>. Uploads are written to hidden .part-*" \
    "files and renamed into place only after 1029, so no temporary file is left."
STORE=$DATA/files/$CLIENT_ID
[[ -d $STORE ]] || fail "no folder $STORE"
(cd "$DATA" && ls -l "files/$CLIENT_ID") | show
if find "$DATA/files" -name '.part-*' | grep -q .; then
    fail "temporary .part-* files were left in $DATA/files"
fi

step "What the server recorded in defensive.db" \
    "Read-only, while the server runs (the database is in WAL mode)." \
    "PublicKey and AESKey are never printed."
show_database

step "Compare the stored files with the originals" \
    "The stored bytes must be identical to the files the client read."
cmp "$TEXT_FILE" "$STORE/hello.txt" || fail "stored hello.txt differs from the original"
echo "   hello.txt: identical"
cmp "$BINARY_FILE" "$STORE/plain_1048577.bin" ||
    fail "stored plain_1048577.bin differs from the original"
echo "   plain_1048577.bin: identical"

step "Stop the server" \
    "SIGTERM: the server stops accepting, lets transfers in flight finish, and" \
    "exits 0."
kill -TERM "$SERVER_PID"
rc=0
wait "$SERVER_PID" || rc=$?
SERVER_PID=""
[[ $rc -eq 0 ]] || fail "the server exited with status $rc after SIGTERM"
tail -n 2 "$WORK/server.log" | show
echo "   server exited with status 0; removing $WORK"
