#!/bin/bash
# `cmake --install` into a scratch root, as the DEB lays it out (prefix /usr):
#   - every program, the sentencepiece plugin (lib/dsv3), the systemd units, the sysusers file,
#     the example configs (/etc/dsv3), man pages, completion, the Grafana dashboard and the
#     Prometheus rules are there;
#   - the units pass `systemd-analyze verify`, keep KillMode=process (ranks outlive a restart
#     of the daemon and are adopted), and their exposure score is printed;
#   - the installed programs run from there (--version) with no RUNPATH into the build tree,
#     and no installed text file names the build tree;
#   - `cpack -G DEB` packs the same with Debian's libraries as dependencies and the configs as
#     conffiles.
# usage: install_test.sh BUILD_DIR
set -euo pipefail
build=$(cd "$1" && pwd)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
fail() { echo "install_test: $*" >&2; exit 1; }

DESTDIR=$root cmake --install "$build" --prefix /usr > "$root/install.log" || { cat "$root/install.log"; fail "cmake --install failed"; }

for f in usr/bin/dsv3d usr/bin/dsv3ctl usr/bin/dsv3-agent usr/bin/dsv3-worker \
         usr/lib/systemd/system/dsv3d.service usr/lib/systemd/system/dsv3-agent.service \
         usr/lib/sysusers.d/dsv3.conf etc/dsv3/dsv3d.toml etc/dsv3/dsv3-agent.toml \
         usr/share/dsv3/grafana/dsv3-dashboard.json usr/share/dsv3/prometheus/dsv3-alerts.yml \
         usr/share/dsv3/prometheus/prometheus.yml usr/share/man/man1/dsv3ctl.1 usr/share/man/man1/dsv3d.1 \
         usr/share/man/man1/dsv3-agent.1 usr/share/man/man1/dsv3-worker.1 usr/share/bash-completion/completions/dsv3ctl \
         usr/share/zsh/vendor-completions/_dsv3ctl; do
  [ -e "$root/$f" ] || fail "missing /$f"
done
if grep -q "sentencepiece" "$build/CMakeCache.txt" && [ -e "$build/lib/dsv3/libdsv3_sentencepiece.so" ]; then
  [ -e "$root/usr/lib/dsv3/libdsv3_sentencepiece.so" ] || fail "missing /usr/lib/dsv3/libdsv3_sentencepiece.so"
fi

for unit in dsv3d dsv3-agent; do
  file=$root/usr/lib/systemd/system/$unit.service
  grep -qx "ExecStart=/usr/bin/$unit .*" "$file" || fail "$unit.service does not start /usr/bin/$unit"
  grep -qx "KillMode=process" "$file" || fail "$unit.service must keep KillMode=process (rank adoption)"
  # verify resolves ExecStart on this host: check a copy that points at the scratch root.
  sed "s|=/usr/bin/|=$root/usr/bin/|" "$file" > "$root/$unit.service"
  # --man=no: the Documentation= pages are checked above, not through this host's man(1).
  out=$(systemd-analyze verify --man=no "$root/$unit.service" 2>&1) || fail "systemd-analyze verify $unit.service: $out"
  # Nothing but this host's lack of the dsv3 user (sysusers creates it on install) may be said.
  if echo "$out" | grep -v -e "Failed to resolve user" -e "^$" | grep -q .; then
    fail "systemd-analyze verify $unit.service: $out"
  fi
  score=$(systemd-analyze security --offline=true "$root/$unit.service" 2>/dev/null | tail -1)
  echo "systemd-analyze security $unit.service: $score"
done

for p in dsv3d dsv3ctl dsv3-agent dsv3-worker; do
  if readelf -d "$root/usr/bin/$p" | grep -E "R(UN)?PATH" | grep -qF "$build"; then
    fail "/usr/bin/$p has a RUNPATH into the build tree"
  fi
  v=$("$root/usr/bin/$p" --version) || fail "/usr/bin/$p --version failed"
  case "$v" in "$p "*"(commit "*) ;; *) fail "/usr/bin/$p --version printed: $v" ;; esac
done
echo "$("$root/usr/bin/dsv3ctl" --version)"

if grep -rlI --exclude=install.log -F "$build" "$root"; then fail "installed files name the build tree $build"; fi

# The DEB: the same files, Debian's libraries as dependencies, the configs as conffiles.
(cd "$root" && cpack -G DEB --config "$build/CPackConfig.cmake" -B "$root/pkg" > "$root/cpack.log" 2>&1) ||
  { cat "$root/cpack.log"; fail "cpack -G DEB failed"; }
deb=$(ls "$root"/pkg/dsv3_*.deb) || fail "cpack wrote no .deb"
listing=$(dpkg-deb -c "$deb")
for f in ./usr/bin/dsv3d ./usr/bin/dsv3-worker ./usr/lib/systemd/system/dsv3d.service ./etc/dsv3/dsv3d.toml \
         ./usr/share/man/man1/dsv3ctl.1; do
  echo "$listing" | grep -q " $f\$" || fail "the DEB lacks $f"
done
dpkg-deb -f "$deb" Depends | grep -q "libtorch" || fail "the DEB does not depend on libtorch: $(dpkg-deb -f "$deb" Depends)"
dpkg-deb -f "$deb" Recommends | grep -q "libjs-chart.js" || fail "the DEB does not recommend libjs-chart.js"
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx "/etc/dsv3/dsv3d.toml" || fail "dsv3d.toml is not a conffile"
echo "install_test: $(basename "$deb"), $(du -k "$deb" | cut -f1) KiB"
echo "install_test: ok"
