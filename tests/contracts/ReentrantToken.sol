// SPDX-License-Identifier: MIT
// Test-only (tests/test_guard.py): an ERC20 whose next transfer, once armed, calls back: after
// the balances have moved, the token calls `target` with `data` (as msg.sender) and bubbles up a
// revert. Anyone may arm it: in the tests the thief does, to re-enter the DelegationManager or
// the guard in the middle of a guarded swap. Compiled from source at test time.
pragma solidity ^0.8.20;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

contract ReentrantToken is ERC20 {
    address public target;
    bytes public data;
    uint256 public calls;

    constructor(string memory name_, string memory symbol_) ERC20(name_, symbol_) {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// The next transfer (not a mint) calls `target_` with `data_`, once.
    function arm(address target_, bytes calldata data_) external {
        target = target_;
        data = data_;
    }

    function _update(address from, address to, uint256 amount) internal override {
        super._update(from, to, amount);
        address callee = target;
        if (callee == address(0) || from == address(0)) return;
        bytes memory callData = data;
        delete target;
        delete data;
        ++calls;
        (bool ok, bytes memory result) = callee.call(callData);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(result, 32), mload(result))
            }
        }
    }
}
