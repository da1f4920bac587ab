"""Secrets never leak (issue 12, "Secrets"): URL credentials are masked wherever configuration or
an error is shown, key files open to others are refused, malformed keys are configuration
errors, and a full run of the real daemon, with every secret configured, shows none of them in
its logs, its CLI, its health and metrics, or its database.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio
from daemon_harness import (
    daemon_document,
    driftd_process,
    move_price,
    portfolio_drift,
    write_toml,
)
from http_server import Request, Response, loopback_http
from rpc_proxy import rpc_proxy
from test_daemon import COINGECKO_IDS, TARGETS, setup_portfolio

from daemon import db as dbm
from daemon.chain import ChainClient
from daemon.cli.main import main
from daemon.config import (
    ConfigError,
    DatabaseConfig,
    Secret,
    effective_config,
    mask_url,
    parse_config,
)
from daemon.devtools.devnet_records import Devnet
from daemon.devtools.pgserver import PostgresServer
from daemon.signer import TxSigner
from daemon.uniswap import UniswapV2


@pytest.fixture(autouse=True)
def _restore_standard_library_logging() -> Iterator[None]:
    """`driftd run` installs a root logging handler: take it away again after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# --- masking ----------------------------------------------------------------------------------

ALCHEMY_KEY = "AlchemyKey1234567890abcdefXYZ"
INFURA_KEY = "0123456789abcdef0123456789abcdef"
SLACK_TOKEN = "SlackToken0123456789abcd"
DISCORD_TOKEN = "Discord-Token_0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH"

MASKED = {
    # userinfo
    "postgresql://driftd:hunter2@db/driftd": "postgresql://driftd:***@db/driftd",
    "https://user:p4ss/w0rd@rpc.example:8545/": "https://user:***@rpc.example:8545/",
    "https://:projectSecret@mainnet.infura.io/": "https://:***@mainnet.infura.io/",
    f"https://{INFURA_KEY}@rpc.example/": "https://***@rpc.example/",
    # key-looking path segments
    f"https://eth-mainnet.g.alchemy.com/v2/{ALCHEMY_KEY}": "https://eth-mainnet.g.alchemy.com/v2/***",
    f"https://mainnet.infura.io/v3/{INFURA_KEY}": "https://mainnet.infura.io/v3/***",
    "https://node.example/rpc/abcdefghijklmnopqrstuvwxyzabcdefgh": "https://node.example/rpc/***",
    # query strings: every value
    "https://rpc.example/?apikey=K&token=T&key=Y": "https://rpc.example/?apikey=***&token=***&key=***",
    "https://rpc.example/rpc?chain=1#secret": "https://rpc.example/rpc?chain=***#***",
    # webhooks
    f"https://hooks.slack.com/services/T0AAAA111/B0BBBB222/{SLACK_TOKEN}": (
        "https://hooks.slack.com/services/***/***/***"
    ),
    f"https://discord.com/api/webhooks/123456789012345678/{DISCORD_TOKEN}": (
        "https://discord.com/api/webhooks/***/***"
    ),
    "https://example.com/hooks/shorttoken": "https://example.com/hooks/***",
    # what is not a credential stays readable
    "http://127.0.0.1:8545": "http://127.0.0.1:8545",
    "https://api.coingecko.com/api/v3": "https://api.coingecko.com/api/v3",
    "postgresql:///driftd": "postgresql:///driftd",
    "postgresql://h/db?sslmode=require&password=pw": "postgresql://h/db?sslmode=require&password=***",
    "http://host:8545/path?mail=a@b": "http://host:8545/path?mail=***",
}


@pytest.mark.parametrize("url", MASKED, ids=range(len(MASKED)))
def test_mask_url_hides_credentials_wherever_they_hide(url: str) -> None:
    assert mask_url(url) == MASKED[url]
    # Inside free text (an error message quoting the URL) too.
    assert mask_url(f"HTTP 401 for url '{url}'.") == f"HTTP 401 for url '{MASKED[url]}'."


def test_mask_url_can_hide_a_whole_path() -> None:
    """A webhook URL is a secret as a whole (a generic one need not look like a key)."""
    assert mask_url("https://ntfy.sh/mytopic?x=1", hide_path=True) == "https://ntfy.sh/***"
    assert mask_url("https://example.com/", hide_path=True) == "https://example.com/"


def _config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_check_config_masks_rpc_keys_and_webhook_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: `driftd check-config` printed the RPC URL's API key and the Slack webhook token
    in full."""
    monkeypatch.delenv("DRIFTD_SIGNER_KEY", raising=False)
    rpc = f"https://eth-mainnet.g.alchemy.com/v2/{ALCHEMY_KEY}?apikey=QueryKey1"
    webhook = f"https://hooks.slack.com/services/T0AAAA111/B0BBBB222/{SLACK_TOKEN}"
    coingecko = "https://pro-api.coingecko.com/api/v3?x_cg_pro_api_key=CgKey1"
    path = _config_file(
        tmp_path,
        f'[chain]\nrpc_url = "{rpc}"\n[alerts]\nwebhook_url = "{webhook}"\n'
        f'[prices]\ncoingecko_base_url = "{coingecko}"\n'
        '[database]\nurl = "postgresql://driftd:hunter2@db/driftd"\n',
    )
    assert main(["--config", str(path), "check-config"]) == 0
    out = capsys.readouterr().out
    for secret in (ALCHEMY_KEY, "QueryKey1", SLACK_TOKEN, "T0AAAA111", "CgKey1", "hunter2"):
        assert secret not in out
    shown = json.loads(out)
    assert shown["chain"]["rpc_url"] == "https://eth-mainnet.g.alchemy.com/v2/***?apikey=***"
    assert shown["alerts"]["webhook_url"] == "https://hooks.slack.com/***"
    assert shown["prices"]["coingecko_base_url"].endswith("/api/v3?x_cg_pro_api_key=***")
    assert shown["database"]["url"] == "postgresql://driftd:***@db/driftd"


def test_a_mistyped_url_is_refused_without_echoing_its_key(tmp_path: Path) -> None:
    document = {
        "chain": {"rpc_url": f"htps://eth-mainnet.g.alchemy.com/v2/{ALCHEMY_KEY}"},
        "alerts": {"webhook_url": f"hooks.slack.com/services/T0/B0/{SLACK_TOKEN}x"},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(document, {})
    text = "\n".join(info.value.problems)
    assert "chain.rpc_url: must be an http(s) URL" in text
    assert "alerts.webhook_url: must be an http(s) URL" in text
    assert ALCHEMY_KEY not in text
    assert SLACK_TOKEN not in text


def test_every_url_setting_is_masked_in_the_effective_config() -> None:
    config = parse_config(
        {
            "database": {"url": "postgresql://h/db?password=DbQueryPassword"},
            "chain": {"rpc_url": f"https://mainnet.infura.io/v3/{INFURA_KEY}"},
            "alerts": {"webhook_url": "https://ntfy.sh/my-private-topic"},
        },
        {},
    )
    shown = json.dumps(effective_config(config))
    for secret in ("DbQueryPassword", INFURA_KEY, "my-private-topic"):
        assert secret not in shown


# --- key files ----------------------------------------------------------------------------------

KEY = "0x" + "5a" * 32


def _key_file(tmp_path: Path, name: str, content: str, mode: int) -> Path:
    path = tmp_path / name
    path.write_text(content + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602, 0o700 | 0o004])
def test_key_files_open_to_group_or_others_are_refused(tmp_path: Path, mode: int) -> None:
    """Before: a world-readable (0644) key file was accepted."""
    signer = _key_file(tmp_path, "signer key", KEY, mode)
    coingecko = _key_file(tmp_path, "cg.key", "CG-SecretApiKey", mode)
    document = {
        "signer": {"key_file": str(signer)},
        "prices": {"coingecko_api_key_file": str(coingecko)},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(document, {})
    shown = f"{mode & 0o777:04o}"
    assert info.value.problems == [
        f"signer.key_file: signer key file {str(signer)!r} is readable or writable by group or "
        f"others (mode {shown}); restrict it with: chmod 600 '{signer}'",
        f"prices.coingecko_api_key_file: CoinGecko API key file {str(coingecko)!r} is readable "
        f"or writable by group or others (mode {shown}); restrict it with: chmod 600 {coingecko}",
    ]
    assert KEY[2:] not in str(info.value)
    assert "CG-SecretApiKey" not in str(info.value)


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_world_readable_key_file_stops_the_cli_with_78(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    monkeypatch.delenv("DRIFTD_SIGNER_KEY", raising=False)
    signer = _key_file(tmp_path, "signer.key", KEY, 0o644)
    path = _config_file(tmp_path, f'[signer]\nkey_file = "{signer}"\n[log]\nformat = "json"\n')
    assert main(["--config", str(path), command]) == 78
    captured = capsys.readouterr()
    (line,) = (captured.out + captured.err).splitlines()
    assert line == (
        f"driftd: invalid configuration: signer.key_file: signer key file {str(signer)!r} is "
        f"readable or writable by group or others (mode 0644); restrict it with: "
        f"chmod 600 {signer}"
    )


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_key_files_are_accepted(tmp_path: Path, mode: int) -> None:
    signer = _key_file(tmp_path, "signer.key", KEY, mode)
    config = parse_config({"signer": {"key_file": str(signer)}}, {})
    assert config.secrets.signer_key == Secret(KEY)


def test_systemd_credentials_are_accepted_as_they_are(tmp_path: Path) -> None:
    """systemd made $CREDENTIALS_DIRECTORY for this service alone; its modes are its business."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    _key_file(credentials, "signer-key", KEY, 0o644)
    _key_file(credentials, "coingecko-api-key", "CG-SecretApiKey", 0o440)
    config = parse_config({}, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.secrets.signer_key == Secret(KEY)
    assert config.secrets.coingecko_api_key == Secret("CG-SecretApiKey")


# --- malformed keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("0x" + "ab" * 31 + "c", "must be 64 hex digits (32 bytes), got 63 characters"),
        ("ab" * 33, "must be 64 hex digits (32 bytes), got 66 characters"),
        ("0x" + "ag" * 32, "must be 64 hex digits (32 bytes), got other characters"),
        ("0x" + "00" * 32, "must be between 1 and the secp256k1 group order - 1"),
    ],
)
def test_a_malformed_signer_key_is_a_configuration_error_naming_its_source(
    tmp_path: Path, key: str, reason: str
) -> None:
    signer = _key_file(tmp_path, "signer.key", key, 0o600)
    with pytest.raises(ConfigError) as from_file:
        parse_config({"signer": {"key_file": str(signer)}}, {})
    assert from_file.value.problems == [
        f"signer.key_file: signer key file {str(signer)!r} is not a valid secp256k1 private "
        f"key: {reason}"
    ]
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    _key_file(credentials, "signer-key", key, 0o400)
    with pytest.raises(ConfigError) as from_credential:
        parse_config({}, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert from_credential.value.problems == [
        f"signer.key_file: systemd credential {str(credentials / 'signer-key')!r} is not a "
        f"valid secp256k1 private key: {reason}"
    ]
    for problem in from_file.value.problems + from_credential.value.problems:
        assert key[2:10] not in problem


def test_the_signer_refuses_a_key_eth_account_would_pad() -> None:
    """eth-account takes 63 hex digits (a truncated paste) and signs with another key."""
    with pytest.raises(ValueError, match="got 63 characters") as info:
        TxSigner(key=Secret("0x" + "ab" * 31 + "c"))
    assert "abab" not in str(info.value)
    assert TxSigner(key=Secret(KEY.upper().replace("0X", "0x"))).address


# --- a full run, grepped for every secret -------------------------------------------------------


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """Short enough for AF_UNIX (tmp_path may be too long)."""
    directory = Path(tempfile.mkdtemp(prefix="driftd-sec-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _forms_of_the_key(key: str) -> list[str]:
    digits = key.lower().removeprefix("0x")
    return [digits, digits.upper(), "0x" + digits]


async def _cli(argv: list[str], config_path: Path, env: Mapping[str, str]) -> tuple[int, str]:
    """A `driftd` command as a real process: (exit code, stdout + stderr)."""
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "daemon", "--config", str(config_path), *argv],
            env=dict(env),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stdout.decode() + done.stderr.decode()


async def _unix_request(path: Path, line: bytes) -> str:
    with trio.fail_after(10):
        stream = await trio.open_unix_socket(str(path))
        async with stream:
            await stream.send_all(line)
            await stream.send_eof()
            data = b""
            while chunk := await stream.receive_some(1 << 20):
                data += chunk
    return data.decode()


async def _poll(predicate: Any, what: str, within: float) -> Any:
    with trio.move_on_after(within):
        while True:
            try:
                result = await predicate()
            except (dbm.DatabaseUnavailable, dbm.QueryTimeout):
                result = None
            if result:
                return result
            await trio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _events(log_file: Path) -> list[dict[str, Any]]:
    events = []
    for line in log_file.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


async def _dump_database(db: dbm.Database) -> str:
    tables = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    dump = []
    for table in tables:
        name = table["tablename"]
        rows = await db.fetch(f'SELECT t::text AS row FROM "{name}" t')  # noqa: S608
        dump += [f"{name}: {row['row']}" for row in rows]
    return "\n".join(dump)


async def test_a_full_run_shows_no_secret_anywhere(
    chain: ChainClient,
    devnet: Devnet,
    db: dbm.Database,
    db_config: DatabaseConfig,
    tmp_path: Path,
    socket_dir: Path,
    pg_server: PostgresServer | None,
) -> None:
    """The real `driftd run`, configured with every kind of secret — the signer key from a 0600
    file, an RPC URL with a password, a key-like path segment and a query key (through a
    loopback proxy to anvil), a CoinGecko API key from a 0600 file, a Slack-style webhook URL
    with its token — trades once after a market move, alerts (the first webhook delivery
    fails), lives through a PostgreSQL restart and stops. Then all of its output, the CLI's
    (`check-config`, `status`), the health document, the metrics (socket and HTTP) and every
    row of every table are searched for each secret: none is there. Every line the daemon
    wrote is one JSON object."""
    rpc_password = "RpcPass" + secrets.token_hex(8)
    rpc_path_key = "RpcPathKey" + secrets.token_hex(12)
    rpc_query_key = "RpcQueryKey" + secrets.token_hex(8)
    webhook_token = "WebhookToken" + secrets.token_hex(12)
    coingecko_key = "CG-" + secrets.token_hex(12)
    signer_key = devnet.signer_key.reveal()
    forbidden = [
        *_forms_of_the_key(signer_key),
        rpc_password,
        rpc_path_key,
        rpc_query_key,
        webhook_token,
        coingecko_key,
    ]

    uniswap = UniswapV2(chain, devnet.router, devnet.quote.address)
    coingecko_keys_seen: list[str] = []

    async def coingecko(request: Request) -> Response:
        coingecko_keys_seen.append(request.headers.get("x-cg-demo-api-key", ""))
        ids = parse_qs(urlsplit(request.target).query)["ids"][0].split(",")
        body = {}
        for coin in ids:
            token = devnet.token(COINGECKO_IDS[coin])
            price = (
                Decimal(1)
                if token.symbol == devnet.quote_symbol
                else await uniswap.spot_price(
                    token.address, token.decimals, devnet.quote.address, devnet.quote.decimals
                )
            )
            body[coin] = {"usd": float(price), "last_updated_at": int(time.time())}
        return Response(body=json.dumps(body).encode())

    webhook_calls: list[Request] = []

    async def webhook(request: Request) -> Response:
        webhook_calls.append(request)
        # The first delivery fails: the retry path logs too.
        return Response(status=500 if len(webhook_calls) == 1 else 200, body=b"{}")

    with trio.fail_after(150):
        async with (
            rpc_proxy(devnet.rpc_url) as proxy,
            loopback_http(coingecko) as coingecko_server,
            loopback_http(webhook) as webhook_server,
        ):
            rpc_url = (
                f"http://driftd:{rpc_password}@127.0.0.1:{proxy.url.rsplit(':', 1)[1]}"
                f"/v2/{rpc_path_key}?apikey={rpc_query_key}"
            )
            webhook_path = f"/services/T0DRIFTD1/B0DRIFTD2/{webhook_token}"
            signer_file = _key_file(tmp_path, "signer.key", signer_key, 0o600)
            coingecko_file = _key_file(tmp_path, "coingecko.key", coingecko_key, 0o600)
            socket = socket_dir / "driftd.sock"
            prices = {"source": "oracle", "coingecko_base_url": coingecko_server.url + "/api/v3"}
            await setup_portfolio(chain, devnet, db_config, tmp_path, prices=prices)
            document = daemon_document(
                devnet,
                db_config,
                chain={"rpc_url": rpc_url},
                signer={"key_file": str(signer_file)},
                prices={**prices, "coingecko_api_key_file": str(coingecko_file)},
                alerts={"webhook_url": webhook_server.url + webhook_path, "high_drift": 0.01},
                execution={"poll_interval": 0.1},
                health={"socket": str(socket), "metrics_listen": "127.0.0.1:0"},
                log={"format": "json", "level": "debug"},
            )
            config_path = write_toml(tmp_path / "daemon.toml", document)
            env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")}
            log_file = tmp_path / "driftd.log"
            captured: dict[str, str] = {}
            async with driftd_process(config_path, env, log_file) as process:

                async def ready() -> bool:
                    assert process.poll() is None, log_file.read_text()[-3000:]
                    return any(e.get("event") == "ready" for e in _events(log_file))

                await _poll(ready, "the daemon ready", within=30)
                await move_price(chain, devnet, "WETH", Decimal("1.3"))

                async def traded() -> list[dbm.RebalanceLogEntry]:
                    rows = await db.rebalance_history(limit=100)
                    return [r for r in rows if r.status not in {"PENDING", "SKIPPED"}]

                (row,) = await _poll(traded, "the rebalance", within=40)
                assert row.status == "SUCCESS", row.error

                async def delivered() -> bool:
                    return len(webhook_calls) >= 2

                await _poll(delivered, "an alert delivered after a failed attempt", within=20)

                if pg_server is not None:
                    # asyncpg and asyncio log their tracebacks through the standard library.
                    pg_server.stop()
                    try:
                        await trio.sleep(2)
                        assert process.poll() is None, log_file.read_text()[-3000:]
                    finally:
                        pg_server.start()

                async def status_ok() -> bool:
                    code, _ = await _cli(["status"], config_path, env)
                    return code == 0

                await _poll(status_ok, "`driftd status` ok", within=30)
                for argv in (["check-config"], ["status"], ["status", "--json"]):
                    code, output = await _cli(argv, config_path, env)
                    assert code == 0, output
                    captured[" ".join(argv)] = output
                captured["health"] = await _unix_request(socket, b'{"cmd": "health"}\n')
                captured["metrics"] = await _unix_request(socket, b'{"cmd": "metrics"}\n')
                (listening,) = [
                    e for e in _events(log_file) if e.get("event") == "metrics_listening"
                ]
                async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
                    scraped = await http.get(f"http://127.0.0.1:{listening['port']}/metrics")
                captured["metrics over HTTP"] = scraped.text
                process.terminate()
                with trio.fail_after(20):
                    assert await process.wait() == 0, log_file.read_text()[-3000:]
            captured["database"] = await _poll(
                lambda: _dump_database(db), "a database dump", within=20
            )
            captured["log"] = log_file.read_text(errors="replace")

    for where, text in captured.items():
        for secret in forbidden:
            assert secret.lower() not in text.lower(), f"a secret in {where}"
    # Every line the daemon wrote — its own events, asyncpg's and asyncio's during the
    # restart, httpx's — is one JSON object.
    for line in captured["log"].splitlines():
        if line.strip():
            assert isinstance(json.loads(line), dict), line
    assert any(e.get("event") == "alert_delivery_failed" for e in _events(log_file))
    # Each secret was really in use: it reached the proxy, CoinGecko and the webhook.
    assert proxy.count() > 0
    assert set(coingecko_keys_seen) == {coingecko_key}
    assert all(call.target == webhook_path for call in webhook_calls)
    assert await portfolio_drift(chain, devnet, devnet.accounts[0].address, TARGETS) < Decimal(
        "0.15"
    )
    # What the operator sees is still useful: the URLs, masked.
    shown = json.loads(captured["check-config"])
    assert shown["chain"]["rpc_url"].endswith("/v2/***?apikey=***")
    assert f"driftd:***@127.0.0.1:{proxy.url.rsplit(':', 1)[1]}" in shown["chain"]["rpc_url"]
    assert shown["alerts"]["webhook_url"] == webhook_server.url + "/***"
    assert "driftd_" in captured["metrics over HTTP"]
    assert row.transaction_hash is not None
    assert row.transaction_hash[2:] in captured["database"]
