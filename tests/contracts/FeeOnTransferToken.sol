// SPDX-License-Identifier: MIT
// Test-only (tests/test_guard.py): an ERC20 that takes `feeBps` of every transfer (not of a mint
// or a burn) and pays it to `feeRecipient`, fixed at deployment. In the tests the recipient is
// the thief, so every fee the account pays is value stolen. Compiled from source at test time.
pragma solidity ^0.8.20;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

contract FeeOnTransferToken is ERC20 {
    uint256 public immutable feeBps;
    address public immutable feeRecipient;

    constructor(string memory name_, string memory symbol_, uint256 feeBps_, address feeRecipient_)
        ERC20(name_, symbol_)
    {
        feeBps = feeBps_;
        feeRecipient = feeRecipient_;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function _update(address from, address to, uint256 amount) internal override {
        if (from == address(0) || to == address(0)) {
            super._update(from, to, amount);
            return;
        }
        uint256 fee = amount * feeBps / 10_000;
        super._update(from, feeRecipient, fee);
        super._update(from, to, amount - fee);
    }
}
