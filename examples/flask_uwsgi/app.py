"""my_app: the seed's three-page sample app (Flask), served by uWSGI behind NGINX.

Routes: `/`, `/page1`, `/page2` (HTML pages with links to the other two) and `/health`
(what the load balancer's probe asks; the Application Health extension's rich state).
Texts and links are those of the Rust port in examples/my_app.

The footer names the instance and its image: systemd loads SCALESET_INSTANCE and
SCALESET_IMAGE from /etc/scaleset/instance.env (written per instance by scaleset); without
them it shows the hostname and `unknown`.
"""
import os
import socket

from flask import Flask, render_template

app = Flask(__name__)
# Byte for byte the Rust port's pages, final newline included.
app.jinja_env.keep_trailing_newline = True

INSTANCE = os.environ.get("SCALESET_INSTANCE") or socket.gethostname()
IMAGE = os.environ.get("SCALESET_IMAGE") or "unknown"

HEALTH_BODY = '{"ApplicationHealthState":"Healthy"}'


def page(title, where, links):
    return render_template(
        "page.html",
        title=title,
        where=where,
        links=links,
        instance=INSTANCE,
        image=IMAGE,
    )


@app.route("/")
def home():
    return page(
        "Home",
        "the Home page",
        [("/page1", "Navigate to page1"), ("/page2", "Navigate to Page2")],
    )


@app.route("/page1")
def page1():
    return page(
        "Page1",
        "Page1",
        [("/", "Navigate to Home"), ("/page2", "Navigate to Page2")],
    )


@app.route("/page2")
def page2():
    return page(
        "Page2",
        "Page2",
        [("/", "Navigate to Home"), ("/page1", "Navigate to Page1")],
    )


@app.route("/health")
def health():
    return HEALTH_BODY, 200, {"Content-Type": "application/json"}


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=5000)
