#!/bin/bash
# Bakes my_app (Flask + uWSGI behind NGINX) into the VM image. The release pipeline's
# PackerBuild@1 copies the drop to /deployTemp/drop and runs this script as root.
#
# The drop (this folder, published by the CI pipeline):
#   app.py, wsgi.py, templates/   the Flask app and uWSGI's entry point
#   app.ini                       uWSGI's configuration (10 processes, unix socket my_app.sock)
#   my_app.service                systemd unit running uWSGI as www-data
#   my_app                        NGINX site (uwsgi_pass to the socket)

cd "$(dirname "$0")"   # the drop

sudo apt update
# python3-dev and a C compiler (gcc) because `pip3 install uwsgi` compiles uWSGI from source.
sudo apt install -y python3 python3-pip python3-dev gcc nginx

sudo pip3 install uwsgi flask

# The app
sudo mkdir -p /var/www/html/my_app
sudo cp app.py wsgi.py app.ini /var/www/html/my_app/
sudo cp -r templates /var/www/html/my_app/
sudo chown -R www-data:www-data /var/www/html/my_app

# uWSGI, started at boot
sudo cp my_app.service /etc/systemd/system/my_app.service
sudo systemctl daemon-reload
sudo systemctl enable my_app

# NGINX site, next to Debian's default one
sudo cp my_app /etc/nginx/sites-available/my_app
sudo ln -s /etc/nginx/sites-available/my_app /etc/nginx/sites-enabled/
sudo systemctl enable nginx
sudo systemctl restart nginx
