#!/bin/sh
# Runs inside the debootstrapped root (chroot) to make it a lab server image.
set -eu
systemctl enable fleetlab-uptime.service fleetlab-sshd-keygen.service ssh.service
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
