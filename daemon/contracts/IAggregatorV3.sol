// SPDX-License-Identifier: MIT
// The read side of a Chainlink price feed (AggregatorV3Interface), as the guard uses it: the
// canonical mainnet feeds (EACAggregatorProxy) and driftd's devnet mock both implement it.
pragma solidity ^0.8.24;

interface IAggregatorV3 {
    /// Decimals of `answer` (8 for the USD feeds).
    function decimals() external view returns (uint8);

    function description() external view returns (string memory);

    function version() external view returns (uint256);

    function getRoundData(uint80 roundId)
        external
        view
        returns (uint80 roundId_, int256 answer, uint256 startedAt, uint256 updatedAt, uint80 answeredInRound);

    function latestRoundData()
        external
        view
        returns (uint80 roundId, int256 answer, uint256 startedAt, uint256 updatedAt, uint80 answeredInRound);
}
