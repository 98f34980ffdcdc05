#!/usr/bin/env bash
# netns_test.sh - kvxfer between two "hosts" (network namespaces joined by a veth
# pair), UCX over tcp: a good pull with data check, then a link cut during a
# transfer that must end in a clear error within a bound, not a hang.
#
#   tests/kvxfer/netns_test.sh [path/to/test_net_kvx]
# Needs root (ip netns, tc).  Exits 77 (skip) when namespaces are not permitted.
set -u
BIN=${1:-${PD_BINARY_DIR:-build}/tests/test_net_kvx}
NS_A=kvxA_$$ NS_B=kvxB_$$ VA=kvxva$$ VB=kvxvb$$
IP_A=10.77.$(( $$ % 250 )).1 IP_B=10.77.$(( $$ % 250 )).2
PORT=15579
TMP=$(mktemp -d /tmp/kvx_netns.XXXXXX)
PROD_PID=""

skip() { echo "SKIP netns_test: $*"; rm -rf "$TMP"; exit 77; }
fail() { echo "FAIL netns_test: $*"; cleanup; exit 1; }
cleanup() {
    [ -n "$PROD_PID" ] && kill "$PROD_PID" 2>/dev/null && wait "$PROD_PID" 2>/dev/null
    ip netns del "$NS_A" 2>/dev/null
    ip netns del "$NS_B" 2>/dev/null
    rm -rf "$TMP"
}

[ -x "$BIN" ] || skip "no test binary at $BIN"
ip netns add "$NS_A" 2>/dev/null || skip "ip netns is not permitted here"
trap cleanup EXIT INT TERM
ip netns add "$NS_B" || fail "second namespace"
ip link add "$VA" type veth peer name "$VB" || fail "veth pair"
ip link set "$VA" netns "$NS_A" && ip link set "$VB" netns "$NS_B" || fail "move veth"
ip -n "$NS_A" addr add "$IP_A/24" dev "$VA" && ip -n "$NS_B" addr add "$IP_B/24" dev "$VB" || fail "addresses"
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
ip -n "$NS_A" link set "$VA" up && ip -n "$NS_B" link set "$VB" up || fail "links up"

# 64 MiB of 1 MiB blocks, three leases: one good pull, one cut, one spare
NB=64 BB=1048576
ip netns exec "$NS_A" env UCX_TLS=tcp UCX_NET_DEVICES="$VA" \
    "$BIN" --producer "$IP_A" "$PORT" "$NB" "$BB" 3 >"$TMP/prod.out" 2>"$TMP/prod.err" &
PROD_PID=$!
for _ in $(seq 100); do grep -q READY "$TMP/prod.out" 2>/dev/null && break; sleep 0.1; done
grep -q READY "$TMP/prod.out" || { cat "$TMP/prod.err"; fail "producer did not start"; }

echo "== good pull across namespaces"
OUT=$(timeout 60 ip netns exec "$NS_B" env UCX_TLS=tcp UCX_NET_DEVICES="$VB" \
      "$BIN" --consumer "$IP_A" "$PORT" "$NB" "$BB" netns-0 2>"$TMP/c0.err")
RC=$?
echo "$OUT"
[ $RC -eq 0 ] && echo "$OUT" | grep -q "RESULT PD_OK .*data=ok" || { cat "$TMP/c0.err"; fail "good pull failed"; }

echo "== link cut during a transfer"
# slow the link to ~80 Mbit/s so 64 MiB takes several seconds, then cut it
tc -n "$NS_A" qdisc add dev "$VA" root tbf rate 80mbit burst 64kb latency 50ms || fail "tc"
START=$(date +%s.%N)
ip netns exec "$NS_B" env UCX_TLS=tcp UCX_NET_DEVICES="$VB" \
    timeout 90 "$BIN" --consumer "$IP_A" "$PORT" "$NB" "$BB" netns-1 1 30 >"$TMP/c1.out" 2>"$TMP/c1.err" &
CPID=$!
sleep 1.5
ip -n "$NS_B" link set "$VB" down
wait $CPID
RC=$?
END=$(date +%s.%N)
ELAPSED=$(awk -v a="$START" -v b="$END" 'BEGIN{printf "%.2f", b-a}')
cat "$TMP/c1.out"
echo "consumer exit $RC after ${ELAPSED}s"
[ $RC -ne 0 ] || fail "a pull over a cut link reported success"
[ $RC -ne 124 ] || fail "the consumer hung (killed by timeout)"
grep -q "RESULT PD_ERR_" "$TMP/c1.out" || fail "no clear error line"
awk -v e="$ELAPSED" 'BEGIN{exit !(e < 40)}' || fail "error took ${ELAPSED}s"
echo "PASS netns_test"
