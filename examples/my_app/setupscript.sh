#!/bin/bash
# Bakes my_app into an Ubuntu VM image (run by Packer, e.g.
# `sudo bash /deployTemp/setupscript.sh`, after the drop is uploaded to
# /deployTemp).
#
# Drop layout (the package folder this script lives in):
#   setupscript.sh   this script
#   my_app           the compiled my_app binary (release build)
#   my_app.service   systemd unit, installed to /etc/systemd/system/
#   nginx/my_app     NGINX site, installed to /etc/nginx/sites-available/my_app
#                    (kept in nginx/ because the binary is already named my_app)

cd "$(dirname "$0")"

sudo apt-get update
sudo apt-get install -y nginx

# The app
sudo mkdir -p /var/www/html/my_app
sudo cp my_app /var/www/html/my_app/my_app
sudo chmod 755 /var/www/html/my_app/my_app

# systemd service (the uWSGI replacement); started at boot
sudo cp my_app.service /etc/systemd/system/my_app.service
sudo chmod 644 /etc/systemd/system/my_app.service
sudo systemctl daemon-reload
sudo systemctl enable my_app

# NGINX site, replacing the default one
sudo cp nginx/my_app /etc/nginx/sites-available/my_app
sudo ln -sf /etc/nginx/sites-available/my_app /etc/nginx/sites-enabled/my_app
sudo rm -f /etc/nginx/sites-enabled/default
sudo systemctl enable nginx
sudo systemctl restart nginx
