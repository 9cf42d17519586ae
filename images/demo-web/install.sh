#!/bin/sh
# Installs the demo site into nginx; run by imgforge's bake with the service tree as cwd.
set -eu
install -m 0644 site.conf /etc/nginx/sites-available/imgforge-demo
ln -sf /etc/nginx/sites-available/imgforge-demo /etc/nginx/sites-enabled/default
install -m 0755 boot-stamp /usr/local/sbin/imgforge-demo-boot-stamp
