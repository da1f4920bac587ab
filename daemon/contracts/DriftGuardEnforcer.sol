// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IAggregatorV3} from "./IAggregatorV3.sol";

interface IERC20Balance {
    function balanceOf(address account) external view returns (uint256);
}

/// @title DriftGuardEnforcer: bounds what a redemption may cost the delegator, at oracle prices
/// @notice A caveat enforcer for the MetaMask Delegation Framework v1.3.0 (ICaveatEnforcer hooks).
/// Put on the delegation that lets driftd's signer swap from an owner's smart account, it makes
/// every redemption satisfy, whatever the redeemer (a thief with the daemon's key) chooses:
///  1. each execution is a single-call, zero-ETH Uniswap V2 exact-input token swap
///     (`swapExactTokensForTokens` or its fee-on-transfer variant) whose every path token is in
///     the terms' token set and whose recipient is the delegator;
///  2. the delegator's holdings of the token set, valued at Chainlink prices (never at pool
///     prices), drop by at most `maxLossBps` of their value before the redemption; and
///  3. the losses of all redemptions in the current period stay within `periodCap`.
/// Prices must be positive and no older than `maxStaleness`, or the redemption reverts.
///
/// @dev Terms (packed, big-endian; 26 + 42·n bytes, 1 ≤ n ≤ 16):
///   [0:2]   uint16  maxLossBps    loss bound per redemption, in 1/10 000 of the value before
///   [2:6]   uint32  maxStaleness  seconds a feed's `updatedAt` may lag the block timestamp
///   [6:10]  uint32  period        seconds; periods are [k·period, (k+1)·period) of block time
///   [10:26] uint128 periodCap     total loss allowed per period, USD with 18 decimals
///   then per token, 42 bytes: address token ‖ address feed ‖ uint8 tokenDecimals ‖ uint8 feedDecimals
/// Values are USD with 18 decimals: balance × answer × 1e18 / 10^(tokenDecimals + feedDecimals),
/// rounded down per token (checked arithmetic: a product beyond 2^256 reverts, failing closed).
///
/// Hooks (the DelegationManager's order in `redeemDelegations`: every caveat's `beforeAllHook` for
/// every batch entry, then per entry `beforeHook` → execution → `afterHook`, then every
/// `afterAllHook`):
///   beforeAllHook: checks the execution (1.), then opens a *window* keyed by
///     (msg.sender, delegator, keccak256(terms)) in transient storage: the first call snapshots
///     the oracle prices and the value of the delegator's token set; later calls only deepen it.
///   afterAllHook: the call that closes the window (depth back to 0) re-reads the balances,
///     values them at the snapshot's prices and enforces 2. and 3.; the period's loss is kept in
///     persistent storage under the same key.
///   beforeHook, afterHook: nothing.
/// The window's transient state deliberately outlives each hook call (solc warns about EIP-1153
/// composability): it must span the whole redemption. Its depth is back to 0 once it closes, and
/// the next window in the same transaction takes a fresh snapshot.
///
/// Why the bypasses fail:
///  - Worthless-token pool (swap into a token the thief mints): the token is not in the set, so
///    the path check reverts (`TokenNotAllowed`); were it allowed, the account's set value would
///    fall by what it swapped away and the loss bound reverts.
///  - A pool of listed tokens the thief created at a bad price, or a sandwich of the real pool:
///    the output is valued at oracle prices, so the loss is measured and bounded (2., 3.).
///  - Swapping a token outside the set (one the account approved to the router on its own):
///    its value is invisible to the snapshot, so the path check refuses it instead.
///  - Multi-hop through an unlisted token: every path token must be listed (a route through the
///    quote token needs the quote token in the set, with its feed).
///  - Fee-on-transfer tokens: accounting is by balances, so the fee is a measured loss.
///  - Several executions in one redemption (approve + swap + approve + swap): one window spans
///    them all, so their combined effect is checked once, against one snapshot.
///  - Re-entrancy through a token, or nested `redeemDelegations` (an EIP-7702 delegate): nested
///    hooks only move the depth counter; the outermost window's close sees every balance change.
///    A redemption started before a window opens or after it closes is a window of its own, with
///    its own bound, and all of them draw on the one period cap.
///  - Transient storage is reset by a revert and at the end of the transaction, so no window
///    can be left open for a later transaction, nor one close without its snapshot.
///  - Calling the hooks directly (or from another "manager"): state is keyed by msg.sender, so
///    only the DelegationManager's own windows and period losses count for its redemptions.
///  - Oracle: a zero or negative answer reverts (`InvalidPrice`), as does an `updatedAt` older
///    than `maxStaleness` or in the future (`StalePrice`). `answeredInRound` is not checked: it is
///    deprecated for Chainlink's OCR feeds (always equal to `roundId`).
///  - Gains are never credited against the period's losses.
/// What the guard trusts: the feeds in the terms, the set the owner signed, and the other caveats
/// for what it does not check itself (the router as target: AllowedTargets; expiry: Timestamp).
contract DriftGuardEnforcer {
    uint256 private constant HEADER_LENGTH = 26;
    uint256 private constant ENTRY_LENGTH = 42;
    uint256 private constant MAX_TOKENS = 16;
    uint256 private constant BPS = 10_000;
    uint256 private constant USD_SCALE = 1e18;

    /// Transient layout from a window's base slot: depth, value before, then one price per token.
    uint256 private constant VALUE_OFFSET = 1;
    uint256 private constant PRICES_OFFSET = 2;

    bytes1 private constant CALLTYPE_SINGLE = 0x00;
    /// swapExactTokensForTokens(uint256,uint256,address[],address,uint256)
    bytes4 private constant SWAP_EXACT_TOKENS_FOR_TOKENS = 0x38ed1739;
    /// swapExactTokensForTokensSupportingFeeOnTransferTokens(uint256,uint256,address[],address,uint256)
    bytes4 private constant SWAP_EXACT_TOKENS_FOR_TOKENS_FOT = 0x5c11d795;

    struct PeriodLoss {
        uint64 period;
        uint192 loss;
    }

    /// keccak256(abi.encode(manager, delegator, keccak256(terms))) → the current period's loss.
    mapping(bytes32 key => PeriodLoss) private _losses;

    error InvalidTerms();
    error InvalidExecutionMode(bytes32 mode);
    error NativeValueNotAllowed();
    error MethodNotAllowed(bytes4 selector);
    error RecipientNotAllowed(address recipient);
    error TokenNotAllowed(address token);
    error StalePrice(address feed, uint256 updatedAt);
    error InvalidPrice(address feed, int256 answer);
    error NoOpenWindow();
    error LossAboveBound(uint256 valueBefore, uint256 valueAfter);
    error PeriodCapExceeded(uint256 periodLoss, uint256 periodCap);

    // --- ICaveatEnforcer ------------------------------------------------------------------------

    function beforeAllHook(
        bytes calldata terms,
        bytes calldata,
        bytes32 mode,
        bytes calldata executionCallData,
        bytes32,
        address delegator,
        address
    ) external {
        uint256 count = _tokenCount(terms);
        _checkExecution(terms, count, mode, executionCallData, delegator);
        uint256 base = uint256(_key(msg.sender, delegator, terms));
        uint256 depth = _tload(base);
        _tstore(base, depth + 1);
        if (depth == 0) _snapshot(terms, count, base, delegator);
    }

    function beforeHook(bytes calldata, bytes calldata, bytes32, bytes calldata, bytes32, address, address)
        external
        pure
    {}

    function afterHook(bytes calldata, bytes calldata, bytes32, bytes calldata, bytes32, address, address)
        external
        pure
    {}

    function afterAllHook(
        bytes calldata terms,
        bytes calldata,
        bytes32,
        bytes calldata,
        bytes32,
        address delegator,
        address
    ) external {
        bytes32 key = _key(msg.sender, delegator, terms);
        uint256 base = uint256(key);
        uint256 depth = _tload(base);
        if (depth == 0) revert NoOpenWindow();
        _tstore(base, depth - 1);
        if (depth == 1) _settle(terms, key, delegator);
    }

    // --- views (for the daemon's pre-check and for monitoring) ----------------------------------

    /// The value of `account`'s token set at the feeds' current prices (USD, 18 decimals); reverts
    /// as the hooks do on a stale, zero or negative answer.
    function value(bytes calldata terms, address account) external view returns (uint256 total) {
        uint256 count = _tokenCount(terms);
        uint256 maxStaleness = uint32(bytes4(terms[2:6]));
        for (uint256 i; i < count; ++i) {
            (address token, address feed, uint256 scale) = _entry(terms, i);
            total += _value(IERC20Balance(token).balanceOf(account), _price(feed, maxStaleness), scale);
        }
    }

    /// The loss already counted against the current period for `delegator`'s delegations with
    /// these `terms`, redeemed through `manager` (USD, 18 decimals).
    function periodLoss(address manager, address delegator, bytes calldata terms) external view returns (uint256) {
        _tokenCount(terms);
        PeriodLoss memory recorded = _losses[_key(manager, delegator, terms)];
        uint64 current = uint64(block.timestamp / uint32(bytes4(terms[6:10])));
        return recorded.period == current ? recorded.loss : 0;
    }

    // --- internals ------------------------------------------------------------------------------

    /// Opens a window: the feeds' prices and the value of `delegator`'s token set at them.
    function _snapshot(bytes calldata terms, uint256 count, uint256 base, address delegator) private {
        uint256 maxStaleness = uint32(bytes4(terms[2:6]));
        uint256 total;
        for (uint256 i; i < count; ++i) {
            (address token, address feed, uint256 scale) = _entry(terms, i);
            uint256 price = _price(feed, maxStaleness);
            _tstore(base + PRICES_OFFSET + i, price);
            total += _value(IERC20Balance(token).balanceOf(delegator), price, scale);
        }
        _tstore(base + VALUE_OFFSET, total);
    }

    /// Closes a window: the loss at the snapshot's prices within the redemption and period bounds.
    function _settle(bytes calldata terms, bytes32 key, address delegator) private {
        uint256 base = uint256(key);
        uint256 count = _tokenCount(terms);
        uint256 valueBefore = _tload(base + VALUE_OFFSET);
        uint256 valueAfter;
        for (uint256 i; i < count; ++i) {
            (address token,, uint256 scale) = _entry(terms, i);
            valueAfter += _value(IERC20Balance(token).balanceOf(delegator), _tload(base + PRICES_OFFSET + i), scale);
        }
        if (valueAfter >= valueBefore) return;

        uint256 loss = valueBefore - valueAfter;
        if (loss * BPS > valueBefore * uint16(bytes2(terms[0:2]))) revert LossAboveBound(valueBefore, valueAfter);
        uint256 periodCap = uint128(bytes16(terms[10:26]));
        uint64 current = uint64(block.timestamp / uint32(bytes4(terms[6:10])));
        PeriodLoss memory recorded = _losses[key];
        uint256 total = loss + (recorded.period == current ? recorded.loss : 0);
        if (total > periodCap) revert PeriodCapExceeded(total, periodCap);
        _losses[key] = PeriodLoss(current, uint192(total));
    }

    /// Validates the terms' shape and bounds; the number of tokens.
    function _tokenCount(bytes calldata terms) private pure returns (uint256 count) {
        if (terms.length < HEADER_LENGTH + ENTRY_LENGTH || (terms.length - HEADER_LENGTH) % ENTRY_LENGTH != 0) {
            revert InvalidTerms();
        }
        count = (terms.length - HEADER_LENGTH) / ENTRY_LENGTH;
        if (count > MAX_TOKENS || uint16(bytes2(terms[0:2])) > BPS || uint32(bytes4(terms[6:10])) == 0) {
            revert InvalidTerms();
        }
    }

    /// Token `i < count` (the length was validated by `_tokenCount`): its address, its feed and
    /// 10^(tokenDecimals + feedDecimals).
    function _entry(bytes calldata terms, uint256 i) private pure returns (address token, address feed, uint256 scale) {
        uint256 decimals;
        assembly ("memory-safe") {
            let entry := add(terms.offset, add(HEADER_LENGTH, mul(i, ENTRY_LENGTH)))
            token := shr(96, calldataload(entry))
            feed := shr(96, calldataload(add(entry, 20)))
            let both := shr(240, calldataload(add(entry, 40)))
            decimals := add(shr(8, both), and(both, 0xff))
        }
        scale = 10 ** decimals;
    }

    function _listed(bytes calldata terms, uint256 count, address token) private pure returns (bool found) {
        assembly ("memory-safe") {
            let entry := add(terms.offset, HEADER_LENGTH)
            for { let end := add(entry, mul(count, ENTRY_LENGTH)) } lt(entry, end) { entry := add(entry, ENTRY_LENGTH) } {
                if eq(shr(96, calldataload(entry)), token) {
                    found := 1
                    break
                }
            }
        }
    }

    /// A single call of a V2 exact-input token swap, without ETH, paid to the delegator, along a
    /// path of listed tokens only.
    function _checkExecution(
        bytes calldata terms,
        uint256 count,
        bytes32 mode,
        bytes calldata executionCallData,
        address delegator
    ) private pure {
        bytes calldata path = _swapPath(mode, executionCallData, delegator);
        for (uint256 at; at < path.length; at += 32) {
            address token = address(uint160(uint256(bytes32(path[at:at + 32]))));
            if (!_listed(terms, count, token)) revert TokenNotAllowed(token);
        }
    }

    /// The path words of a single-call, zero-ETH exact-input swap paying `delegator`.
    function _swapPath(bytes32 mode, bytes calldata executionCallData, address delegator)
        private
        pure
        returns (bytes calldata path)
    {
        if (bytes1(mode) != CALLTYPE_SINGLE) revert InvalidExecutionMode(mode);
        // ERC-7579 single execution: target (20) ‖ value (32) ‖ calldata.
        if (executionCallData.length < 56) revert MethodNotAllowed(bytes4(0));
        if (uint256(bytes32(executionCallData[20:52])) != 0) revert NativeValueNotAllowed();
        bytes4 selector = bytes4(executionCallData[52:56]);
        if (selector != SWAP_EXACT_TOKENS_FOR_TOKENS && selector != SWAP_EXACT_TOKENS_FOR_TOKENS_FOT) {
            revert MethodNotAllowed(selector);
        }
        // The arguments as the router's ABI decoder reads them: (amountIn, amountOutMin, offset of
        // path, to, deadline); path = length ‖ words at `offset`; addresses are the low 160 bits.
        // Slices are bounds-checked, so a malformed encoding reverts here as in the router.
        bytes calldata arguments = executionCallData[56:];
        address to = address(uint160(uint256(bytes32(arguments[96:128]))));
        if (to != delegator) revert RecipientNotAllowed(to);
        uint256 pathAt = uint256(bytes32(arguments[64:96]));
        uint256 length = uint256(bytes32(arguments[pathAt:pathAt + 32]));
        path = arguments[pathAt + 32:pathAt + 32 + length * 32];
    }

    function _price(address feed, uint256 maxStaleness) private view returns (uint256) {
        (, int256 answer,, uint256 updatedAt,) = IAggregatorV3(feed).latestRoundData();
        if (answer <= 0) revert InvalidPrice(feed, answer);
        if (updatedAt > block.timestamp || block.timestamp - updatedAt > maxStaleness) {
            revert StalePrice(feed, updatedAt);
        }
        return uint256(answer);
    }

    /// Checked arithmetic: reverts (fails closed) only if balance × answer × 1e18 ≥ 2^256.
    function _value(uint256 balance, uint256 price, uint256 scale) private pure returns (uint256) {
        return balance * price * USD_SCALE / scale;
    }

    function _key(address manager, address delegator, bytes calldata terms) private pure returns (bytes32) {
        return keccak256(abi.encode(manager, delegator, keccak256(terms)));
    }

    function _tload(uint256 slot) private view returns (uint256 word) {
        assembly ("memory-safe") {
            word := tload(slot)
        }
    }

    function _tstore(uint256 slot, uint256 word) private {
        assembly ("memory-safe") {
            tstore(slot, word)
        }
    }
}
