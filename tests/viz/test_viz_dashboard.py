"""Dashboard files and the localhost server (port 0, port in use, invalid ports)."""

import json
import socket
import urllib.request

import pytest

from mlxterp.viz import VizError, check_port, serve_dashboard, write_dashboard
from viz_factory import make_dashboard_data

DATA = make_dashboard_data(12)
PREFIX = "window.MLXTERP_DASHBOARD = "


@pytest.fixture
def site(tmp_path):
    write_dashboard(DATA, tmp_path)
    return tmp_path


def get(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers, response.read()


def test_files_hold_the_page_and_the_data_as_a_global(tmp_path):
    index = write_dashboard(DATA, tmp_path / "dash")
    assert index == tmp_path / "dash" / "index.html"
    assert sorted(p.name for p in index.parent.iterdir()) == ["data.js", "index.html"]
    html = index.read_text(encoding="utf-8")
    assert '<script src="data.js"></script>' in html and "fetch(" not in html
    assert "<title>tiny-test-model · features · mlxterp</title>" in html
    script = (index.parent / "data.js").read_text(encoding="ascii")
    assert script.startswith(PREFIX) and script.endswith(";\n") and "<" not in script
    assert json.loads(script[len(PREFIX):-2]) == json.loads(json.dumps(DATA))


def test_bad_data_is_refused(tmp_path):
    with pytest.raises(VizError, match="collect_dashboard_data"):
        write_dashboard({"features": []}, tmp_path)
    broken = dict(DATA, features=[{"index": 0}])
    with pytest.raises(VizError, match="feature record 0 lacks label"):
        write_dashboard(broken, tmp_path)


def test_port_zero_serves_the_folder_on_a_free_port(site):
    with serve_dashboard(site, port=0) as server:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/"
        status, headers, body = get(server.url)
        assert status == 200 and body == (site / "index.html").read_bytes()
        assert headers["Cache-Control"] == "no-store"
        assert get(server.url + "data.js")[2] == (site / "data.js").read_bytes()
    with pytest.raises(OSError):
        get(server.url)


def test_port_in_use_names_the_port_and_suggests_another(site):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(VizError, match=rf"port {port} on 127\.0\.0\.1 is already in use.*port=0"):
            serve_dashboard(site, port=port)


def test_serving_a_folder_without_a_dashboard_is_refused(tmp_path):
    with pytest.raises(VizError, match="no index.html; write the dashboard first"):
        serve_dashboard(tmp_path, port=0)


@pytest.mark.parametrize("port", [99999, -1, 80.5, True])
def test_a_port_that_is_no_port_number_is_refused(port):
    with pytest.raises(VizError, match="port must be a whole number from 0 to 65535"):
        check_port(port)
