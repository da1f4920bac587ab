"""Checks on a portfolio's delegation file before it is registered.

``driftd portfolio add`` refuses a delegation file that would not work or that grants more than
least authority (DESIGN.md §4.6): each delegation must come from the portfolio's smart account,
name this daemon's signer as delegate, pin targets, methods and calldata, and carry a signature
the smart account accepts on chain (ERC-1271, the check the DelegationManager makes when the
daemon redeems it). Catching a bad file here beats finding out at the first rebalance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio

from daemon.chain import ChainClient, ChainError, TxSigner
from daemon.cli_db import VerifierUnavailable
from daemon.config import Config
from daemon.delegation import (
    Delegation,
    DelegationDomain,
    DelegationFormatError,
    delegation_from_json,
    is_disabled_on_chain,
    kind_of,
    least_authority_problems,
    signature_is_valid_on_chain,
)


def verify_portfolio_delegations(
    delegations: list[dict[str, Any]], smart_account: str, config: Config
) -> None:
    """Raise ``ValueError`` naming every problem with a portfolio's signed delegations."""
    if config.secrets.signer_key is None:
        raise ValueError(
            "the signer key is not configured, so the delegate cannot be checked "
            "(set signer.key_file or DRIFTD_SIGNER_KEY)"
        )
    delegate = TxSigner(key=config.secrets.signer_key).address
    try:
        parsed = [delegation_from_json(item, f"[{i}]") for i, item in enumerate(delegations)]
    except DelegationFormatError as exc:
        raise ValueError(str(exc)) from None
    problems: list[str] = []
    for index, delegation in enumerate(parsed):
        problems += [
            f"[{index}]: {problem}"
            for problem in least_authority_problems(
                delegation,
                account=smart_account,
                delegate=delegate,
                router=config.chain.router,
                enforcers=config.delegation,
            )
        ]
    kinds = {kind_of(d, config.delegation) for d in parsed}
    problems += [f"no {kind} delegation" for kind in ("approve", "swap") if kind not in kinds]
    if problems:
        raise ValueError("; ".join(problems))
    try:
        onchain = trio.run(_onchain_problems, config, parsed)
    except ChainError as exc:
        raise VerifierUnavailable(f"cannot check the signatures on chain: {exc}") from None
    if onchain:
        raise ValueError("; ".join(onchain))


async def _onchain_problems(config: Config, delegations: Sequence[Delegation]) -> list[str]:
    domain = DelegationDomain(chain_id=config.chain.chain_id, manager=config.delegation.manager)
    problems: list[str] = []
    async with ChainClient(config.chain) as client:
        for index, delegation in enumerate(delegations):
            if not await client.get_code(delegation.delegator):
                problems.append(f"[{index}]: the smart account has no code on chain")
            elif not await signature_is_valid_on_chain(client, delegation, domain):
                problems.append(f"[{index}]: signature rejected by the smart account (ERC-1271)")
            elif await is_disabled_on_chain(client, delegation, domain):
                problems.append(f"[{index}]: disabled on the DelegationManager")
    return problems
