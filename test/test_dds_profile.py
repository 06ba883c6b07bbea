"""The Fast DDS profile the project's processes run with: its file, who points at it, and that a
profile the user names wins."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import find_ros.launch_support as ls
from find_ros.dds_profile import PROFILE_FILE, PROFILE_VARIABLE, dds_profile_env
from find_ros.process_harness import node_env

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config"
NS = {"dds": "http://www.eprosima.com"}


def test_the_profile_keeps_a_camera_frame_and_an_embedding_grid_in_shared_memory():
    root = ET.parse(CONFIG / PROFILE_FILE).getroot()
    shm = [d for d in root.iterfind(".//dds:transport_descriptor", NS) if d.findtext("dds:type", namespaces=NS) == "SHM"]
    assert len(shm) == 1
    frame = 640 * 480 * 3                                    # rgb8, larger than Fast DDS's default 512 kB segment
    assert int(shm[0].findtext("dds:segment_size", namespaces=NS)) >= 8 * frame
    assert int(shm[0].findtext("dds:maxMessageSize", namespaces=NS)) >= 8 * frame
    participant = root.find(".//dds:participant", NS)
    assert participant.get("is_default_profile") == "true"
    used = [t.text for t in participant.iterfind(".//dds:userTransports/dds:transport_id", NS)]
    assert set(used) == {d.findtext("dds:transport_id", namespaces=NS) for d in root.iterfind(".//dds:transport_descriptor", NS)}
    assert participant.findtext(".//dds:useBuiltinTransports", namespaces=NS) == "false"


def test_every_process_points_at_it_unless_the_user_names_a_profile(monkeypatch, tmp_path):
    monkeypatch.delenv(PROFILE_VARIABLE, raising=False)
    expected = {PROFILE_VARIABLE: str(CONFIG / PROFILE_FILE)}
    assert dds_profile_env(CONFIG) == expected
    assert node_env(5)[PROFILE_VARIABLE] == expected[PROFILE_VARIABLE]                   # tests, bench, demo
    kwargs = ls.node_kwargs(ls.PERCEPTION, ls.defaults(ls.PERCEPTION.arguments), str(REPO))   # launch files
    assert kwargs["additional_env"] == expected
    assert dds_profile_env(tmp_path) == {}                   # an install without the file: Fast DDS's defaults
    monkeypatch.setenv(PROFILE_VARIABLE, "/etc/my_profile.xml")
    assert dds_profile_env(CONFIG) == {} and node_env(5)[PROFILE_VARIABLE] == "/etc/my_profile.xml"
    for script in ("test.sh", "bench.sh", "demo.sh"):
        assert f'{PROFILE_VARIABLE}="${{{PROFILE_VARIABLE}:-$root/config/{PROFILE_FILE}}}"' in (REPO / "scripts" / script).read_text()
