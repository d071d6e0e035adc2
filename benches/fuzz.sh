#!/usr/bin/env bash
# Long fuzz runs: every bolero target for N minutes (default 10), release build, then one line
# per target: inputs tried, and whether it failed. `cargo test` runs the same targets for about
# a second each.
#
#   bash benches/fuzz.sh            # 10 minutes per target
#   bash benches/fuzz.sh 1          # 1 minute per target
#
# Engine: bolero's random engine on stable Rust (BOLERO_RANDOM_TEST_TIME_MS). With cargo-bolero
# on the PATH and ENGINE=afl, each target runs coverage-guided instead
# (`cargo bolero test --engine afl`; needs a C compiler to build AFL).
# A failure prints the input that broke the property; make it a regression test.
set -uo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"
ms=$((minutes * 60 * 1000))
engine="${ENGINE:-random}"

# (cargo test selector, test name)
targets=(
  "--test fuzz|mqtt_framer_hands_out_exactly_the_bytes_it_was_given"
  "--test fuzz|device_packets_parse_without_panic_and_subscribes_rebuild_identically"
  "--test fuzz|proxy_headers_that_parse_print_back_to_the_same_header"
  "--test fuzz|a_client_ip_is_the_peer_unless_a_trusted_peer_named_another"
  "--test fuzz|push_serials_and_transaction_ids_keep_their_alphabet"
  "--test fuzz|no_random_token_verifies"
  "--test fuzz|any_config_text_is_accepted_or_refused_without_panic"
  "--test fuzz|agent_urls_never_carry_credentials"
  "--test fuzz|a_ban_record_that_parses_round_trips"
  "--lib|forward::mqtt::scan::tests::fuzz_scanner_passes_every_byte_in_order"
  "--lib|policy::acl::tests::fuzz_a_covered_filter_only_matches_allowed_topics"
  "--lib|handshake::upgrade::tests::fuzz_upgrade_header_checks"
  "--lib|agent::connect::tests::fuzz_a_proxy_answer_opens_a_pipe_only_on_2xx"
)

cargo test --release --test fuzz --lib --no-run >/dev/null 2>&1 || {
  echo "build failed: run cargo test --release --test fuzz --no-run" >&2
  exit 1
}
printf '%-78s %14s  %s\n' "target ($minutes min each, engine $engine)" "inputs" "result"
failed=0
for entry in "${targets[@]}"; do
  selector="${entry%%|*}"
  name="${entry##*|}"
  log=$(mktemp)
  if [ "$engine" = afl ] && command -v cargo-bolero >/dev/null 2>&1; then
    # shellcheck disable=SC2086
    cargo bolero test $selector "$name" --engine afl --time "$((minutes * 60))" >"$log" 2>&1
  else
    # shellcheck disable=SC2086
    BOLERO_RANDOM_TEST_TIME_MS=$ms cargo test --release $selector "$name" -- --exact --nocapture >"$log" 2>&1
  fi
  status=$?
  inputs=$(grep -o 'rng inputs: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  result=ok
  if [ $status -ne 0 ]; then
    result="FAILED (see $log)"
    failed=$((failed + 1))
  else
    rm -f "$log"
  fi
  printf '%-78s %14s  %s\n' "$name" "${inputs:-?}" "$result"
done
exit $failed
