"""The seed's three-page Flask sample app, re-created for the app-stack benchmark.

Same routes and texts as examples/my_app (the Rust port): `/`, `/page1`, `/page2`
rendered from Jinja templates like the seed did, plus `/health`.
Served by uWSGI (processes = 10, master = true, unix socket) behind NGINX.
"""
import os
import socket

from flask import Flask, render_template

app = Flask(__name__)

INSTANCE = os.environ.get("INSTANCE_NAME", socket.gethostname())
IMAGE = os.environ.get("IMAGE_VERSION", "unknown")


@app.route("/")
def home():
    return render_template(
        "page.html",
        title="Home",
        where="the Home page",
        links=[("/page1", "Navigate to page1"), ("/page2", "Navigate to Page2")],
        instance=INSTANCE,
        image=IMAGE,
    )


@app.route("/page1")
def page1():
    return render_template(
        "page.html",
        title="Page1",
        where="Page1",
        links=[("/", "Navigate to Home"), ("/page2", "Navigate to Page2")],
        instance=INSTANCE,
        image=IMAGE,
    )


@app.route("/page2")
def page2():
    return render_template(
        "page.html",
        title="Page2",
        where="Page2",
        links=[("/", "Navigate to Home"), ("/page1", "Navigate to Page1")],
        instance=INSTANCE,
        image=IMAGE,
    )


@app.route("/health")
def health():
    return "OK"


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=5000)
