#!/bin/sh
# Runs inside the debootstrapped root (chroot) to make it a lab server image.
set -eu
systemctl enable fleetlab-uptime.service fleetlab-sshd-keygen.service ssh.service \
    fleetlab-booted-kernel.service
# uname reports the kernel the host booted (fleetlab-uname): coreutils' own is diverted,
# under the path coreutils' file list names (/bin/uname on bookworm, /usr/bin on trixie;
# both the same file on a merged /usr), so that its upgrades go to the diverted name
uname_path=$(dpkg-query -L coreutils | grep -E '^(/usr)?/bin/uname$' | head -n 1)
dpkg-divert --local --rename --divert "$uname_path.distrib" --add "$uname_path"
install -m 755 /usr/local/lib/fleetlab/uname "$uname_path"
# modinfo/modprobe know the lab kernel's fabric modules (fleetlab-kmod), else ask kmod
ln -s modprobe /usr/local/sbin/modinfo
# systemd-modules-load always fails in a container; nothing else here needs it.
systemctl mask systemd-modules-load.service getty@tty1.service console-getty.service \
    systemd-remount-fs.service sys-kernel-config.mount sys-kernel-debug.mount
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
mkdir -p /root/.ssh && chmod 700 /root/.ssh
mkdir -p /etc/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n' > /etc/systemd/journald.conf.d/fleetlab.conf
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
