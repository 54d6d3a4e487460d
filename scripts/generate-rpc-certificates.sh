#!/usr/bin/env bash
# generate-rpc-certificates.sh [--renew server|client|all] [--owner USER[:GROUP]] CERT_DIR [VALIDITY_DAYS]
#
# The openssl-only way to set up debvisor-rpcd's certificates (debvisorctl pki does
# the same and more). Writes into CERT_DIR:
#   ca-cert.pem / ca-key.pem          the CA (ECDSA P-256, 10 years). Created once and
#                                     then REUSED: it is never regenerated, since that
#                                     would invalidate every certificate issued from it.
#   server-cert.pem / server-key.pem  the daemon (SANs DNS:debvisor-rpc, DNS:localhost,
#                                     IP:127.0.0.1; EKU serverAuth)
#   client-cert.pem / client-key.pem  the web panel (CN web-panel, SAN
#                                     URI:spiffe://debvisor/panel/web-panel; EKU clientAuth)
# Keys are 0600, certificates 0644. It finishes with `openssl verify`.
# --owner USER[:GROUP] (e.g. debvisor, the daemon's user; run as root) hands the server
# key and certificate to that user so the daemon can read its key; the CA and the client
# pair stay with whoever ran the script. Without it, the server pair is owned by the caller.
#
# Idempotent: a run re-issues a leaf only if it is missing, does not match its key,
# does not verify against the CA, or expires within RENEW_BEFORE_DAYS (default 30).
# --renew server|client|all re-issues those leaves regardless: that is how the
# daemon's certificate monitor uses it (tls.renewal.mode: command), e.g.
#   command: [/usr/lib/debvisor/generate-rpc-certificates.sh, --renew, server, /etc/debvisor/rpc, "90"]
# Every file is written to a temporary name and renamed into place, key before
# certificate, so a reader never sees a half-written file.
set -euo pipefail

usage() {
  echo "usage: $0 [--renew server|client|all] [--owner USER[:GROUP]] CERT_DIR [VALIDITY_DAYS]" >&2
  exit 2
}

renew=""
owner=""
while [ $# -gt 0 ]; do
  case "$1" in
    --renew)
      [ $# -ge 2 ] || usage
      renew="$2"
      shift 2
      ;;
    --renew=*)
      renew="${1#--renew=}"
      shift
      ;;
    --owner)
      [ $# -ge 2 ] || usage
      owner="$2"
      shift 2
      ;;
    --owner=*)
      owner="${1#--owner=}"
      shift
      ;;
    -h | --help) usage ;;
    --) shift; break ;;
    -*) echo "unknown option: $1" >&2; usage ;;
    *) break ;;
  esac
done
case "$renew" in "" | server | client | all) ;; *) echo "--renew takes server, client or all" >&2; usage ;; esac
[ $# -ge 1 ] && [ $# -le 2 ] || usage

CERT_DIR="$1"
VALIDITY_DAYS="${2:-365}"
CA_DAYS="${CA_DAYS:-3650}"
RENEW_BEFORE_DAYS="${RENEW_BEFORE_DAYS:-30}"
case "$VALIDITY_DAYS" in '' | *[!0-9]* | 0) echo "VALIDITY_DAYS must be a positive integer" >&2; exit 2 ;; esac

OPENSSL="${OPENSSL:-openssl}"
if [ -n "$owner" ]; then
  # USER alone means USER:USER's primary group, as chown "USER:" does.
  case "$owner" in *:*) ;; *) owner="$owner:" ;; esac
  id -u "${owner%%:*}" >/dev/null 2>&1 || { echo "--owner: no user ${owner%%:*} on this host" >&2; exit 2; }
fi
command -v "$OPENSSL" >/dev/null || { echo "openssl not found" >&2; exit 1; }

umask 077
mkdir -p "$CERT_DIR"
cd "$CERT_DIR"

work="$(mktemp -d ".gen-rpc-certs.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Atomically move $1 (in $work) to $2 with mode $3.
install_file() {
  chmod "$3" "$1"
  mv -f "$1" "$2"
}

new_key() { "$OPENSSL" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# A random positive 128-bit serial (top bits 01, as src/pki does).
new_serial() { printf '0x%x%s' $((4 + RANDOM % 4)) "$("$OPENSSL" rand -hex 16 | cut -c2-)"; }

# ---- CA: reuse, never regenerate --------------------------------------------------
if [ -e ca-cert.pem ] || [ -e ca-key.pem ]; then
  if [ ! -e ca-cert.pem ] || [ ! -e ca-key.pem ]; then
    echo "incomplete CA in $CERT_DIR (need both ca-cert.pem and ca-key.pem); refusing to regenerate it" >&2
    exit 1
  fi
  if [ "$("$OPENSSL" x509 -in ca-cert.pem -noout -pubkey)" != "$("$OPENSSL" pkey -in ca-key.pem -pubout)" ]; then
    echo "ca-key.pem does not match ca-cert.pem in $CERT_DIR; refusing to continue" >&2
    exit 1
  fi
  echo "reusing the CA in $CERT_DIR: $("$OPENSSL" x509 -in ca-cert.pem -noout -subject)"
else
  new_key "$work/ca-key.pem"
  "$OPENSSL" req -x509 -new -key "$work/ca-key.pem" -sha256 -days "$CA_DAYS" \
    -subj "/CN=DebVisor RPC CA" -set_serial "$(new_serial)" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$work/ca-cert.pem"
  # Exclusive: if another run created a CA meanwhile, theirs wins and we stop.
  if ! ln "$work/ca-key.pem" ca-key.pem 2>/dev/null; then
    echo "a CA appeared in $CERT_DIR while this ran; run again to use it" >&2
    exit 1
  fi
  chmod 0600 ca-key.pem
  chmod 0644 "$work/ca-cert.pem"
  ln "$work/ca-cert.pem" ca-cert.pem
  echo "created a CA in $CERT_DIR"
fi

# ---- leaves -----------------------------------------------------------------------
leaf_ok() { # name
  local cert="$1-cert.pem" key="$1-key.pem"
  [ -s "$cert" ] && [ -s "$key" ] || return 1
  [ "$("$OPENSSL" x509 -in "$cert" -noout -pubkey 2>/dev/null)" = "$("$OPENSSL" pkey -in "$key" -pubout 2>/dev/null)" ] || return 1
  "$OPENSSL" verify -CAfile ca-cert.pem "$cert" >/dev/null 2>&1 || return 1
  "$OPENSSL" x509 -in "$cert" -noout -checkend $((RENEW_BEFORE_DAYS * 86400)) >/dev/null || return 1
}

issue() { # name cn eku san
  local name="$1" cn="$2" eku="$3" san="$4"
  cat >"$work/$name.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = $eku
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
  new_key "$work/$name-key.pem"
  "$OPENSSL" req -new -key "$work/$name-key.pem" -subj "/CN=$cn" -out "$work/$name.csr"
  "$OPENSSL" x509 -req -in "$work/$name.csr" -CA ca-cert.pem -CAkey ca-key.pem \
    -set_serial "$(new_serial)" -days "$VALIDITY_DAYS" -sha256 \
    -extfile "$work/$name.ext" -out "$work/$name-cert.pem" 2>/dev/null
  # Key first: a crash in between leaves a mismatched pair, which the next run
  # (leaf_ok) and the daemon both detect, rather than a new cert with an old key.
  install_file "$work/$name-key.pem" "$name-key.pem" 0600
  install_file "$work/$name-cert.pem" "$name-cert.pem" 0644
  echo "issued $name-cert.pem: $("$OPENSSL" x509 -in "$name-cert.pem" -noout -serial -enddate | tr '\n' ' ')"
}

want() { # name
  [ "$renew" = "$1" ] || [ "$renew" = all ] || ! leaf_ok "$1"
}

if want server; then
  issue server debvisor-rpc serverAuth "DNS:debvisor-rpc, DNS:localhost, IP:127.0.0.1"
else
  echo "server-cert.pem is current; kept"
fi
if want client; then
  issue client web-panel clientAuth "URI:spiffe://debvisor/panel/web-panel"
else
  echo "client-cert.pem is current; kept"
fi

chmod 0644 ca-cert.pem server-cert.pem client-cert.pem
chmod 0600 ca-key.pem server-key.pem client-key.pem
if [ -n "$owner" ]; then
  chown "$owner" server-key.pem server-cert.pem
  echo "server-key.pem and server-cert.pem are owned by ${owner%:}"
fi

"$OPENSSL" verify -CAfile ca-cert.pem server-cert.pem client-cert.pem
