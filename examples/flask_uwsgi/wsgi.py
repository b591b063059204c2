"""uWSGI's entry point (`module = wsgi` in app.ini): the WSGI callable is `application`."""
from app import app

application = app

if __name__ == "__main__":
    app.run()
