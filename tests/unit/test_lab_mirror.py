"""The lab's Debian mirror: the machine's own on Debian, Debian's elsewhere, a knob over both."""

from __future__ import annotations

import pytest

from lab.engine import LabError
from lab.images import choose_debian_mirror, read_apt_sources

DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_CODENAME=bookworm\n'
UBUNTU_24 = ('NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\nID_LIKE=debian\n'
             'VERSION_CODENAME=noble\n')

DEB822 = """\
Types: deb
# a comment: http://elsewhere.example/debian
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""

ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
http://line.example/debian bookworm main contrib
deb http://security.example/debian-security bookworm-security main
"""


def test_debian_machine_uses_its_deb822_mirror():
    assert choose_debian_mirror(DEBIAN_12, DEB822) == "http://mirror.example/debian"


def test_debian_machine_uses_its_one_line_mirror():
    assert choose_debian_mirror(DEBIAN_12, ONE_LINE) == "http://line.example/debian"


def test_third_party_repositories_are_not_the_mirror():
    sources = ("Types: deb\nURIs: https://download.docker.com/linux/debian\n"
               "Suites: bookworm\nComponents: stable\n\n"
               "Types: deb\nURIs: https://deb.nodesource.com/node_22.x\n"
               "Suites: nodistro\nComponents: main\n\n"
               "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\n"
               "Components: main\nEnabled: no\n\n" + DEB822)
    assert choose_debian_mirror(DEBIAN_12, sources) == "http://mirror.example/debian"


def test_an_ubuntu_machine_needs_a_debian_source_or_the_knob():
    ubuntu_sources = "deb http://archive.ubuntu.com/ubuntu noble main restricted universe\n"
    with pytest.raises(LabError, match="FLEETLAB_DEBIAN_MIRROR: no Debian mirror in this "
                                       "ubuntu machine's apt sources"):
        choose_debian_mirror(UBUNTU_24, ubuntu_sources)
    with pytest.raises(LabError):
        choose_debian_mirror("", "")  # no os-release at all, no source
    mixed = ubuntu_sources + "deb http://mirror.example/debian trixie main\n"
    assert choose_debian_mirror(UBUNTU_24, mixed) == "http://mirror.example/debian"
    assert choose_debian_mirror(UBUNTU_24, ubuntu_sources, "http://m.example/debian/") == \
        "http://m.example/debian"


@pytest.mark.parametrize("os_release", [DEBIAN_12, UBUNTU_24])
def test_the_knob_overrides_both(os_release):
    assert choose_debian_mirror(os_release, DEB822, "http://knob.example/debian/ ") \
        == "http://knob.example/debian"
    assert choose_debian_mirror(os_release, DEB822, "") != "http://knob.example/debian"


def test_debian_machine_without_a_mirror_says_so():
    with pytest.raises(LabError, match="no Debian mirror in this machine.s apt sources; set "):
        choose_debian_mirror(DEBIAN_12, "deb http://security.example/debian-security "
                                        "bookworm-security main\n")


def test_apt_sources_are_read_in_apts_order(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("# nothing here\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "a.list").write_text(ONE_LINE)
    (tmp_path / "sources.list.d" / "x.sources.disabled").write_text("deb http://no/ a main\n")
    text = read_apt_sources(tmp_path)
    assert "http://no/" not in text
    assert text.index("line.example") < text.index("mirror.example")
    assert choose_debian_mirror(DEBIAN_12, text) == "http://line.example/debian"


def test_a_mirror_list_is_read_for_its_first_mirror(tmp_path):
    """Debian's cloud images: `URIs: mirror+file:///etc/apt/mirrors/debian.list`."""
    (tmp_path / "sources.list.d").mkdir()
    mirrors = tmp_path / "debian.list"
    mirrors.write_text("# first is best\nhttp://listed.example/debian priority:1\n"
                       "http://second.example/debian\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        f"Types: deb\nURIs: mirror+file://{mirrors}\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")
    text = read_apt_sources(tmp_path)
    assert choose_debian_mirror(DEBIAN_12, text) == "http://listed.example/debian"
