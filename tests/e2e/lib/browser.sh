#!/usr/bin/env bash
# A scripted browser for `keygate login` and `keygate token` (run as $BROWSER URL): waits for
# the gateway, follows the sign-in URL with curl and a cookie jar, signs in as
# $KEYGATE_E2E_EMAIL with $KEYGATE_E2E_PASSWORD (unless the jar already is), approves the
# consent page, and lands on the CLI's loopback redirect. Its log goes to $KEYGATE_E2E_BROWSER_LOG.
set -euo pipefail
URL="$1"
JAR="${KEYGATE_E2E_COOKIES:?set KEYGATE_E2E_COOKIES to a cookie jar file}"
exec >>"${KEYGATE_E2E_BROWSER_LOG:-/dev/null}" 2>&1
BASE="${URL%%/oauth2/*}"
for _ in $(seq 100); do curl -fs "$BASE/healthz" >/dev/null && break; sleep 0.1; done
# A person signs in after what they started has come up: $KEYGATE_E2E_READY_PORTS (ports on
# 127.0.0.1, space-separated) are waited for, 30 s at most each.
for port in ${KEYGATE_E2E_READY_PORTS:-}; do
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

# get URL: prints "STATUS LOCATION" and leaves the body in $PAGE.
PAGE=$(mktemp)
trap 'rm -f "$PAGE"' EXIT
get() { curl -s -b "$JAR" -c "$JAR" -o "$PAGE" -w '%{http_code} %{redirect_url}\n' "$1"; }
post() { curl -s -b "$JAR" -c "$JAR" -o "$PAGE" -w '%{http_code} %{redirect_url}\n' "$@"; }
field() { sed -n "s/.*name=\"$1\" value=\"\([^\"]*\)\".*/\1/p" "$PAGE" | head -n1; }

read -r status login < <(get "$URL")
[ "$status" = 303 ] || { echo "authorize answered $status"; cat "$PAGE"; exit 1; }
read -r status next < <(get "$login")
if [ "$status" != 303 ]; then # the sign-in form
  read -r status next < <(post "$BASE/oauth2/login" --data-urlencode "csrf=$(field csrf)" \
    --data-urlencode "request=$(field request)" --data-urlencode "email=$KEYGATE_E2E_EMAIL" \
    --data-urlencode "password=$KEYGATE_E2E_PASSWORD")
  [ "$status" = 303 ] || { echo "sign-in answered $status"; cat "$PAGE"; exit 1; }
fi
read -r status redirect < <(get "$next")
if [ "$status" != 303 ]; then # the consent page
  read -r status redirect < <(post "$BASE/oauth2/consent" --data-urlencode "csrf=$(field csrf)" \
    --data-urlencode "request=$(field request)" -d approve=1)
  [ "$status" = 303 ] || { echo "consent answered $status"; cat "$PAGE"; exit 1; }
fi
curl -fs "$redirect" >/dev/null
echo "signed in through $redirect"
