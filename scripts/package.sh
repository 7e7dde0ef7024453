#!/usr/bin/env bash
# Builds the Debian package: <target dir>/debian/harbor-relay_<version>-1_amd64.deb
# (the target dir is target/ unless CARGO_TARGET_DIR says otherwise)
#
#   scripts/package.sh                 # from a release build (cargo build --release)
#   HARBOR_RELAY_BIN=path scripts/package.sh   # from a binary already built
#
# The package holds the binary, the hardened systemd unit (enabled by
# nobody: the admin runs `systemctl enable --now harbor-relay` after editing
# the config), the example config as /etc/harbor-relay/harbor-relay.toml (a
# conffile: an upgrade never overwrites the admin's edits), the credentials
# directory, the Prometheus alerts and Grafana dashboard, the man page and
# shell completions. Made with dpkg-deb alone: no debian/ tree to keep.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
revision=1
arch=amd64
name=harbor-relay
. scripts/lib.sh
out=${HARBOR_RELAY_DEB_OUT:-$(target_dir)/debian}
root=$out/root

bin=${HARBOR_RELAY_BIN:-}
if [ -z "$bin" ]; then
  # Where cargo put it (CARGO_TARGET_DIR included), as cargo says.
  bin=$(built_binary --release --locked)
fi

rm -rf "$root"
install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
  "$root/etc/harbor-relay" "$root/usr/share/$name" "$root/usr/share/doc/$name" \
  "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"
install -d -m 0700 "$root/etc/harbor-relay/credentials"

install -m 0755 "$bin" "$root/usr/bin/$name"
strip --strip-unneeded "$root/usr/bin/$name"
# The unit as shipped in deploy/, with the binary where the package puts it.
sed 's|/usr/local/bin/harbor-relay|/usr/bin/harbor-relay|' deploy/systemd/harbor-relay.service \
  > "$root/lib/systemd/system/$name.service"
chmod 0644 "$root/lib/systemd/system/$name.service"
# Readable by the unit's DynamicUser; secrets live in credentials/, not here.
install -m 0644 config/harbor-relay.example.toml "$root/etc/harbor-relay/harbor-relay.toml"
install -m 0644 config/harbor-relay.example.toml deploy/prometheus/alerts.yml \
  deploy/grafana/harbor-relay.json "$root/usr/share/$name/"

"$bin" man | gzip -9n > "$root/usr/share/man/man1/$name.1.gz"
"$bin" completions bash > "$root/usr/share/bash-completion/completions/$name"
"$bin" completions zsh > "$root/usr/share/zsh/vendor-completions/_$name"
"$bin" completions fish > "$root/usr/share/fish/vendor_completions.d/$name.fish"
chmod 0644 "$root/usr/share/man/man1/$name.1.gz" "$root"/usr/share/*/*completions*/* \
  "$root"/usr/share/fish/vendor_completions.d/*

cat > "$root/usr/share/doc/$name/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: $name
Source: https://github.com/harbor-relay/harbor-relay

Files: *
Copyright: 2026 the harbor-relay authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
printf '%s (%s-%s) unstable; urgency=medium\n\n  * Package built by scripts/package.sh.\n\n -- harbor-relay maintainers <harbor-relay@example.org>  %s\n' \
  "$name" "$version" "$revision" "$(date -R -u -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" \
  | gzip -9n > "$root/usr/share/doc/$name/changelog.Debian.gz"
chmod 0644 "$root/usr/share/doc/$name/copyright" "$root/usr/share/doc/$name/changelog.Debian.gz"

size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: $name
Version: $version-$revision
Architecture: $arch
Maintainer: harbor-relay maintainers <harbor-relay@example.org>
Installed-Size: $size
Depends: libc6 (>= 2.34), libgcc-s1 (>= 4.2)
Section: admin
Priority: optional
Homepage: https://github.com/harbor-relay/harbor-relay
Description: replicates Harbor artifacts to a second registry on webhook
 harbor-relay receives Harbor's push and delete webhooks and copies each
 artifact itself over the OCI Distribution API to a second registry (for
 example the integrated Harbor of vSphere with Tanzu, with a self-signed
 certificate): manifests byte for byte, every platform, signatures and SBOMs,
 blobs streamed and verified. Jobs are durable; a status page, a jobs API,
 Prometheus metrics and a hardened systemd unit come with it.
EOF
echo /etc/harbor-relay/harbor-relay.toml > "$root/DEBIAN/conffiles"

# Reload systemd so it sees the unit; enable and start nothing.
cat > "$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = "configure" ] && [ -d /run/systemd/system ]; then
  systemctl --system daemon-reload >/dev/null || true
fi
exit 0
EOF
# Stop the service before its files go (remove, or the old binary on upgrade).
cat > "$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = "remove" ]; then
  systemctl stop harbor-relay.service >/dev/null 2>&1 || true
fi
exit 0
EOF
# The job store goes only on purge (a plain remove keeps queued work).
cat > "$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = "purge" ]; then
  rm -rf /var/lib/harbor-relay /var/lib/private/harbor-relay
fi
if [ -d /run/systemd/system ]; then
  systemctl --system daemon-reload >/dev/null || true
fi
exit 0
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

deb="$out/${name}_${version}-${revision}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
