from flask import Flask

from flask_status import FlaskStatus


def test_default_payload() -> None:
    app = Flask(__name__)
    FlaskStatus(app)
    response = app.test_client().get("/api/status")
    assert response.status_code == 200
    assert response.get_json() == {"status": "OK"}
