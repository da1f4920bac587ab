// SPDX-License-Identifier: MIT
// A test-only ERC20 for driftd's devnet: real OpenZeppelin ERC20 semantics with a chosen number
// of decimals (USDC 6, WBTC 8) and an unrestricted mint so tests can fund any account.
// Never deploy this anywhere that matters: anyone can mint.
pragma solidity ^0.8.20;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

contract DevnetToken is ERC20 {
    uint8 private immutable _tokenDecimals;

    constructor(string memory name_, string memory symbol_, uint8 decimals_) ERC20(name_, symbol_) {
        _tokenDecimals = decimals_;
    }

    function decimals() public view override returns (uint8) {
        return _tokenDecimals;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
