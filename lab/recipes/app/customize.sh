#!/bin/sh
# Runs inside the debootstrapped root (chroot) of the stand-in application images.
# Like the official Ollama image, no curl and no wget: a healthcheck must not need them.
set -eu
rm -f /usr/bin/curl /usr/bin/wget
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
