#!/usr/bin/env bash
# Makes a small PKI with openssl for a test or small-cluster dsv3d: a CA, a server
# certificate for the controller and client certificates (mTLS), all in OUT_DIR.
#
#   deploy/gen-certs.sh OUT_DIR [--host NAME]... [--client NAME]... [--days N]
#
# The server certificate names localhost, 127.0.0.1, ::1, this host's name and every
# --host given (the names dsv3ctl, ranks and agents dial). One client certificate is made
# per --client (default: one named "client"). Then:
#   dsv3d  --listen 0.0.0.0:50051 --tls-cert OUT/server.pem --tls-key OUT/server.key \
#          --tls-ca OUT/ca.pem [--tls-client-ca OUT/ca.pem]
#   dsv3ctl login --controller HOST:50051 --tls-ca OUT/ca.pem \
#          [--tls-cert OUT/client.pem --tls-key OUT/client.key]
# Keys are 0600. A real deployment uses its site's CA instead.
set -euo pipefail

usage() { echo "usage: $0 OUT_DIR [--host NAME]... [--client NAME]... [--days N]" >&2; exit 2; }
[ $# -ge 1 ] || usage
out=$1; shift
hosts=(); clients=(); days=825
while [ $# -gt 0 ]; do
  case "$1" in
    --host) [ $# -ge 2 ] || usage; hosts+=("$2"); shift 2 ;;
    --client) [ $# -ge 2 ] || usage; clients+=("$2"); shift 2 ;;
    --days) [ $# -ge 2 ] || usage; days=$2; shift 2 ;;
    *) usage ;;
  esac
done
[ ${#clients[@]} -gt 0 ] || clients=(client)
command -v openssl >/dev/null || { echo "$0: openssl is not installed (deploy/install-deps.sh installs it)" >&2; exit 1; }

mkdir -p "$out"
umask 077
cd "$out"

if [ ! -f ca.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
    -days "$days" -subj "/CN=dsv3 test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

san="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:$(hostname)"
for h in "${hosts[@]}"; do
  if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san+=",IP:$h"; else san+=",DNS:$h"; fi
done

# sign NAME SUBJECT EXTENSIONS...: NAME.key and NAME.pem signed by the CA.
sign() {
  local name=$1 subject=$2; shift 2
  local ext
  ext=$(mktemp)
  printf '%s\n' "$@" > "$ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$name.key" -out "$name.csr" \
    -subj "$subject" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$name.pem" -days "$days" \
    -extfile "$ext" 2>/dev/null
  rm -f "$name.csr" "$ext"
}

sign server "/CN=dsv3d" "subjectAltName=$san" "extendedKeyUsage=serverAuth" "basicConstraints=CA:FALSE"
for c in "${clients[@]}"; do
  sign "$c" "/CN=$c" "extendedKeyUsage=clientAuth" "basicConstraints=CA:FALSE"
done
chmod 0644 ca.pem server.pem "${clients[@]/%/.pem}"
echo "wrote $(pwd): ca.pem, server.pem/.key (for $san), ${clients[*]/%/.pem/.key}"
