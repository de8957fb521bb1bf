"""BioMAJ bank ``.properties`` files read as mirror definitions."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.mirror.definition import MirrorDefinition
from conveyor.mirror.errors import DefinitionError
from conveyor.mirror.listings import APACHE_RULES
from conveyor.mirror.properties import definition_from_properties, load_properties

BANKS = Path(__file__).parent / "banks"

FTP_BANK = """\
[GENERAL]
db.name=alu
protocol=ftp
server=ftp.ncbi.nih.gov
remote.dir=/blast/db/FASTA/
remote.files=^alu.*\\.gz$
"""


def bank(
    text: str,
    *,
    name: str | None = None,
    environ: dict[str, str] | None = None,
    source_name: str = "<bank>",
) -> MirrorDefinition:
    """The definition of ``text``, with no BIOMAJ_* variable of this machine in the way."""
    return definition_from_properties(
        text, name=name, environ=environ or {}, source_name=source_name
    )


def refused(text: str, *, name: str | None = None, source_name: str = "<bank>") -> str:
    """The message of the DefinitionError ``text`` raises."""
    with pytest.raises(DefinitionError) as caught:
        bank(text, name=name, source_name=source_name)
    return str(caught.value)


def test_the_alu_example_of_biomaj() -> None:
    definition = load_properties(BANKS / "alu.properties", environ={})
    assert definition.name == "alu"
    assert definition.source is not None
    assert definition.source.protocol == "ftp"
    assert definition.source.server == "ftp.ncbi.nih.gov"
    assert definition.source.remote_dir == "/blast/db/FASTA/"
    assert definition.source.http_parse is None
    assert definition.source.credentials is None
    assert definition.remote_files == [r"^alu.*\.gz$"]
    assert definition.local_files == [r"^alu\.(a|n).*"]
    assert definition.threads == 1
    assert definition.files == []
    # release.file= and release.regexp= are empty: unset.
    assert definition.release.file is None
    assert definition.release.regexp is None
    assert definition.release.source is None
    assert definition.stop_condition is None
    assert definition.wait_policy is None


def test_defaults_when_keys_are_absent() -> None:
    definition = bank(FTP_BANK.replace("remote.files=^alu.*\\.gz$\n", ""))
    assert definition.remote_files == [".*"]
    assert definition.local_files == ["**/*"]
    assert definition.timeout_download == 3600.0
    assert definition.threads == 4
    assert definition.source is not None
    assert definition.source.options.ssh_new_host == "reject"


def test_http_parse_rules_unescape_backslashes_and_percent() -> None:
    definition = load_properties(BANKS / "ensembl.properties", environ={})
    assert definition.source is not None
    rules = definition.source.http_parse
    assert rules is not None
    assert rules.dir_line.startswith(r'<a[\s]+href="([\w\-\.]+)/"')
    assert "\\\\" not in rules.dir_line + rules.file_line
    assert rules.file_line.endswith(r"[\s]+([\d]+)")
    assert (rules.dir_name, rules.dir_date) == (1, 2)
    assert (rules.file_name, rules.file_date, rules.file_size) == (1, 2, 3)
    assert rules.file_date_format == "%Y-%m-%d %H:%M"
    assert definition.remote_files == [r"^homo_sapiens/dna/.*\.dna\.toplevel\.fa\.gz$"]
    assert definition.release.format == "%Y%m%d"


def test_one_http_key_keeps_the_apache_defaults_for_the_others() -> None:
    definition = bank(FTP_BANK.replace("=ftp\n", "=http\n") + "http.group.file.size=-1\n")
    assert definition.source is not None
    rules = definition.source.http_parse
    assert rules is not None
    assert rules.dir_line == APACHE_RULES.dir_line
    assert rules.file_size == -1


def test_a_bad_http_group_names_the_bank() -> None:
    message = refused(FTP_BANK.replace("=ftp\n", "=http\n") + "http.group.file.name=9\n")
    assert message.startswith("<bank>: ")
    assert "file.name is 9" in message


def test_download_options() -> None:
    definition = bank(
        FTP_BANK.replace("=ftp\n", "=sftp\n")
        + """\
options.names=stop_condition, wait_policy,ssl_verifypeer,ssl_verifyhost,ssh_hosts_file,ssh_new_host,
    ftp_method,tcp_keepalive,skip_check_uncompress
options.stop_condition=stop_after_attempt(5) | stop_after_delay(60)
options.wait_policy=wait_fixed(3) + wait_random(0, 2)
options.ssl_verifypeer=false
options.ssl_verifyhost=0
options.ssh_hosts_file=/etc/biomaj/known_hosts
options.ssh_new_host=Accept
options.ftp_method=SingleCWD
options.tcp_keepalive=30
options.skip_check_uncompress=yes
options.allow_redirections=false
"""
    )
    assert definition.stop_condition == "stop_after_attempt(5) | stop_after_delay(60)"
    assert definition.wait_policy == "wait_fixed(3) + wait_random(0, 2)"
    assert definition.source is not None
    options = definition.source.options
    assert options.ssl_verifypeer is False
    assert options.ssl_verifyhost is False
    assert options.ssh_hosts_file == "/etc/biomaj/known_hosts"
    assert options.ssh_new_host == "accept"
    assert options.ftp_method == "singlecwd"
    assert options.tcp_keepalive == 30
    assert options.skip_check_uncompress is True
    # Not listed in options.names: not read, as in BioMAJ.
    assert options.allow_redirections is True


def test_a_bad_retry_policy_is_refused_with_the_reason() -> None:
    message = refused(
        FTP_BANK + "options.names=stop_condition\noptions.stop_condition=stop_after_attempts(3)\n"
    )
    assert "options.stop_condition" in message
    assert "did you mean stop_after_attempt" in message


def test_a_wait_where_a_stop_belongs_is_refused() -> None:
    message = refused(FTP_BANK + "options.names=wait_policy\noptions.wait_policy=stop_never\n")
    assert "options.wait_policy" in message
    assert "stop_never" in message


def test_an_unknown_option_is_refused_with_the_known_ones() -> None:
    message = refused(FTP_BANK + "options.names=ssl_verify\noptions.ssl_verify=false\n")
    assert "options.names: unknown option 'ssl_verify'" in message
    assert "ssl_verifypeer" in message
    assert "stop_condition" in message


def test_a_listed_option_without_a_value_is_refused() -> None:
    message = refused(FTP_BANK + "options.names=ssl_verifypeer\n")
    assert "options.ssl_verifypeer: missing: options.names lists ssl_verifypeer" in message


@pytest.mark.parametrize("value", ["maybe", "ture", "2"])
def test_a_boolean_option_must_be_a_boolean(value: str) -> None:
    message = refused(FTP_BANK + f"options.names=ssl_verifypeer\noptions.ssl_verifypeer={value}\n")
    assert f"options.ssl_verifypeer: {value!r} is not a boolean" in message


def test_an_option_of_the_wrong_type_names_the_key() -> None:
    message = refused(FTP_BANK + "options.names=tcp_keepalive\noptions.tcp_keepalive=often\n")
    assert "options.tcp_keepalive: Input should be a valid integer" in message
    message = refused(FTP_BANK + "options.names=ftp_method\noptions.ftp_method=fast\n")
    assert "options.ftp_method: Input should be 'default'" in message


def test_multi_makes_one_direct_file_per_entry() -> None:
    definition = load_properties(BANKS / "uniprot_multi.properties", environ={})
    assert definition.source is None
    first, second = definition.files
    assert first.source.protocol == "directftp"
    assert first.source.server == "ftp.uniprot.org"
    assert (
        first.source.remote_dir == "/pub/databases/uniprot/current_release/knowledgebase/complete"
    )
    assert (first.path, first.save_as) == ("reldate.txt", "reldate.txt")
    assert first.source.credentials is not None
    assert first.source.credentials.user == "mirror"
    # A plain protocol means its direct form; the bank's server and credentials fill in.
    assert second.source.protocol == "directhttps"
    assert second.source.server == "rest.uniprot.org"
    assert second.source.remote_dir == "uniprotkb"
    assert (second.path, second.save_as) == ("stream", "human_reviewed.fasta")
    assert second.source.method == "GET"
    assert second.source.params == {
        "format": "fasta",
        "query": "(organism_id:9606) AND (reviewed:true)",
    }
    assert second.source.credentials is not None
    assert second.source.credentials.user == "anonymous"
    assert second.source.credentials.password.get_secret_value() == "anonymous@example.org"
    assert second.source.options.allow_redirections is False
    assert first.source.options.allow_redirections is True


MULTI_BANK = """\
[GENERAL]
db.name=pair
protocol=multi
remote.file.0.protocol=directhttp
remote.file.0.server=example.org
remote.file.0.path=/a/one.txt
"""


def test_multi_refuses_a_gap_in_the_numbers() -> None:
    message = refused(
        MULTI_BANK + "remote.file.2.protocol=directhttp\nremote.file.2.path=/a/three.txt\n"
    )
    assert "remote.file.1.path: missing" in message
    assert "remote.file.2.* would be left out" in message


def test_multi_needs_entries_and_direct_protocols() -> None:
    assert "remote.file.0.path: missing" in refused("[GENERAL]\ndb.name=x\nprotocol=multi\n")
    message = refused(MULTI_BANK.replace("=directhttp", "=sftp"))
    assert "remote.file.0.protocol: sftp cannot fetch one named file" in message


def test_multi_keeps_one_retry_policy_per_mirror() -> None:
    message = refused(
        MULTI_BANK
        + "remote.file.0.options.names=stop_condition\n"
        + "remote.file.0.options.stop_condition=stop_after_attempt(9)\n"
    )
    assert "remote.file.0.options.stop_condition: a mirror has one retry policy" in message


DIRECT_BANK = """\
[GENERAL]
db.name=taxdump
protocol=directhttp
server=ftp.ncbi.nlm.nih.gov
remote.dir=/pub/taxonomy/taxdump.tar.gz/
url.method=post
url.params=format,compress
format.value=tar
compress.value=gzip
target.name=taxonomy/taxdump.tar.gz
"""


def test_a_direct_bank_names_one_file() -> None:
    definition = bank(DIRECT_BANK)
    assert definition.source is None
    (direct,) = definition.files
    assert direct.source.protocol == "directhttp"
    assert direct.source.server == "ftp.ncbi.nlm.nih.gov"
    assert direct.source.remote_dir == "/pub/taxonomy"
    assert direct.path == "taxdump.tar.gz"
    assert direct.save_as == "taxonomy/taxdump.tar.gz"
    assert direct.source.method == "POST"
    assert direct.source.params == {"format": "tar", "compress": "gzip"}


def test_a_direct_file_at_the_root_and_without_target_name() -> None:
    definition = bank(
        DIRECT_BANK.replace("/pub/taxonomy/taxdump.tar.gz/", "/README").replace(
            "target.name=taxonomy/taxdump.tar.gz\n", ""
        )
    )
    (direct,) = definition.files
    assert (direct.source.remote_dir, direct.path, direct.save_as) == ("/", "README", "README")


def test_a_direct_bank_needs_a_file_and_its_param_values() -> None:
    assert "remote.dir: must be the path of the file" in refused(
        DIRECT_BANK.replace("/pub/taxonomy/taxdump.tar.gz/", "/")
    )
    assert "compress.value: missing: url.params lists compress" in refused(
        DIRECT_BANK.replace("compress.value=gzip\n", "")
    )
    assert "url.method: 'PUT' is not GET or POST" in refused(DIRECT_BANK.replace("=post", "=put"))


def test_environment_overrides_the_file() -> None:
    environ = {
        "BIOMAJ_REMOTE_DIR": "/blast/db/v5/",
        "BIOMAJ_DB_NAME": "alu_v5",
        "BIOMAJ_SERVER": "",  # empty: overrides nothing, as in BioMAJ
        "BIOMAJ_REMOTE_FILES": r"^alu.*\.tar\.gz$ ^alu.*\.md5$",
    }
    definition = bank(FTP_BANK, environ=environ)
    assert definition.name == "alu_v5"
    assert definition.source is not None
    assert definition.source.remote_dir == "/blast/db/v5/"
    assert definition.source.server == "ftp.ncbi.nih.gov"
    assert definition.remote_files == [r"^alu.*\.tar\.gz$", r"^alu.*\.md5$"]


def test_os_environ_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIOMAJ_DB_NAME", "from_env")
    assert definition_from_properties(FTP_BANK).name == "from_env"


def test_interpolation_of_other_keys() -> None:
    definition = bank(
        """\
[GENERAL]
db.name=genbank
protocol=ftp
server=ftp.ncbi.nih.gov
root=/genbank
remote.dir=%(root)s/daily-nc/
release.file=^GB_Release_Number$
release.regexp=([0-9]+)
release.remote.dir=%(root)s/
"""
    )
    assert definition.source is not None
    assert definition.source.remote_dir == "/genbank/daily-nc/"
    assert definition.release.source is not None
    assert definition.release.source.remote_dir == "/genbank/"


def test_bad_interpolation_names_the_key() -> None:
    message = refused(FTP_BANK.replace("/blast/db/FASTA/", "%(root)s/FASTA/"))
    assert message.startswith("<bank>: remote.dir: Bad value substitution")
    message = refused(FTP_BANK + "release.format=%Y\n")
    assert "release.format: " in message
    assert "write %% for a literal %" in message


def test_a_file_without_general_section_is_refused() -> None:
    assert "no [GENERAL] section" in refused("[bank]\ndb.name=x\nprotocol=ftp\n")
    assert "no [GENERAL] section" in refused("db.name=x\nprotocol=ftp\n")
    assert "not a bank file" in refused("[GENERAL]\nprotocol=ftp\nprotocol=http\n")


@pytest.mark.parametrize(
    ("protocol", "reason"),
    [
        ("none", "protocol none downloads nothing"),
        ("irods", "protocol irods is not supported"),
        ("gopher", "'gopher' is not supported; use one of ftp, ftps"),
    ],
)
def test_unsupported_protocols_are_refused(protocol: str, reason: str) -> None:
    message = refused(FTP_BANK.replace("=ftp\n", f"={protocol}\n"))
    assert f"protocol: {reason}" in message


def test_a_bank_needs_a_protocol() -> None:
    assert "protocol: missing" in refused(FTP_BANK.replace("protocol=ftp\n", ""))


def test_a_server_is_required_except_on_this_machine() -> None:
    no_server = FTP_BANK.replace("server=ftp.ncbi.nih.gov\n", "")
    assert "server: missing: protocol ftp needs a server" in refused(no_server)
    local = bank(no_server.replace("=ftp\n", "=local\n"))
    assert local.source is not None
    assert (local.source.server, local.source.remote_dir) == ("", "/blast/db/FASTA/")
    rsync = bank(no_server.replace("=ftp\n", "=rsync\n"))
    assert rsync.source is not None
    assert rsync.source.server == ""
    message = refused(no_server.replace("=ftp\n", "=local\n").replace("remote.dir=", "x="))
    assert "remote.dir: missing: protocol local needs the folder" in message


def test_sftp_is_accepted() -> None:
    # BioMAJ's config check refuses sftp; we support it.
    definition = bank(FTP_BANK.replace("=ftp\n", "=sftp\n"))
    assert definition.source is not None
    assert definition.source.protocol == "sftp"


def test_the_name_argument_replaces_db_name() -> None:
    assert bank(FTP_BANK, name="alu_mirror").name == "alu_mirror"
    assert "the bank has no db.name; pass --name" in refused(FTP_BANK.replace("db.name=alu\n", ""))
    assert bank(FTP_BANK.replace("db.name=alu\n", ""), name="alu").name == "alu"


def test_credentials_never_show() -> None:
    definition = bank(
        FTP_BANK
        + "server.credentials=biomaj:p4ss:word\n"
        + "proxy=http://proxy.example.org:3128\n"
        + "proxy_auth=squid:pr0xy-s3cret\n"
    )
    assert definition.source is not None
    assert definition.source.credentials is not None
    assert definition.source.credentials.user == "biomaj"
    assert definition.source.credentials.password.get_secret_value() == "p4ss:word"
    assert definition.source.proxy == "http://proxy.example.org:3128"
    assert definition.source.proxy_auth is not None
    assert definition.source.proxy_auth.user == "squid"
    for shown in (repr(definition), definition.model_dump_json(), str(definition)):
        assert "p4ss" not in shown
        assert "pr0xy-s3cret" not in shown
        assert "**********" in shown


@pytest.mark.parametrize(
    ("proxy", "reason"),
    [
        ("socks5://proxy.example.org:1080", "a socks5:// proxy is not supported"),
        ("http://squid:s3cret@proxy.example.org:3128", "not inside the proxy URL"),
    ],
)
def test_a_proxy_the_http_source_cannot_use_is_refused_with_the_reason(
    proxy: str, reason: str
) -> None:
    message = refused(FTP_BANK + f"proxy={proxy}\n")
    assert reason in message
    assert "s3cret" not in message


def test_release_source_inherits_from_the_bank() -> None:
    definition = bank(
        FTP_BANK
        + "server.credentials=user:secret\n"
        + "release.file=^RELEASE_(\\d+)$\n"
        + "release.control=1\n"
        + "release.server=ftp.example.org\n"
        + "release.proxy_auth=squid:s3cret\n"
    )
    rule = definition.release
    assert rule.file == r"^RELEASE_(\d+)$"
    assert rule.control is True
    assert rule.source is not None
    assert rule.source.protocol == "ftp"
    assert rule.source.server == "ftp.example.org"
    assert rule.source.remote_dir == "/blast/db/FASTA/"
    assert rule.source.credentials is not None
    assert rule.source.credentials.user == "user"
    assert rule.source.proxy is None
    assert rule.source.proxy_auth is not None
    assert rule.source.proxy_auth.user == "squid"


def test_release_of_a_direct_bank_lists_the_folder_of_its_file() -> None:
    definition = bank(
        DIRECT_BANK
        + "release.protocol=https\n"
        + "release.file=^taxdump_(\\d+)\\.md5$\n"
        + "release.credentials=rel:pw\n"
    )
    source = definition.release.source
    assert source is not None
    assert (source.protocol, source.server) == ("https", "ftp.ncbi.nlm.nih.gov")
    assert source.remote_dir == "/pub/taxonomy"
    assert source.credentials is not None
    assert source.credentials.user == "rel"


def test_numbers_and_model_errors_name_the_bank() -> None:
    message = refused(FTP_BANK + "timeout.download=soon\n")
    assert message == "<bank>: timeout.download: 'soon' is not a number"
    message = refused(FTP_BANK + "files.num.threads=0\n", source_name="alu.properties")
    assert message.startswith("alu.properties: threads: ")
    message = refused(FTP_BANK.replace("^alu.*\\.gz$", "^alu(.gz"))
    assert "remote.files pattern '^alu(.gz' is not a regexp" in message
    assert "mirror name 'bad name!'" in refused(FTP_BANK, name="bad name!")


def test_timeout_and_threads() -> None:
    definition = bank(FTP_BANK + "timeout.download=120.5\nfiles.num.threads=8\n")
    assert (definition.timeout_download, definition.threads) == (120.5, 8)


def test_an_unreadable_file_is_a_definition_error(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="cannot read the bank file"):
        load_properties(tmp_path / "missing.properties", environ={})
    latin = tmp_path / "latin.properties"
    latin.write_bytes(b"[GENERAL]\ndb.fullname=\xe9\n")
    with pytest.raises(DefinitionError, match="not UTF-8"):
        load_properties(latin, environ={})
