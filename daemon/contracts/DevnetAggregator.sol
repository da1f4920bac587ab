// SPDX-License-Identifier: MIT
// A test-only Chainlink-compatible price feed for driftd's devnet, with the same write API as
// Chainlink's MockV3Aggregator (updateAnswer, updateRoundData) so tests can set any price, a zero
// or negative answer, or an old updatedAt (a stale feed).
// Never deploy this anywhere that matters: anyone can set the price.
pragma solidity ^0.8.24;

import {IAggregatorV3} from "./IAggregatorV3.sol";

contract DevnetAggregator is IAggregatorV3 {
    struct Round {
        int256 answer;
        uint64 startedAt;
        uint64 updatedAt;
    }

    uint8 public immutable override decimals;
    uint80 public latestRound;
    string private _description;
    mapping(uint80 roundId => Round) private _rounds;

    error NoSuchRound(uint80 roundId);

    event AnswerUpdated(int256 indexed current, uint256 indexed roundId, uint256 updatedAt);

    constructor(uint8 decimals_, int256 initialAnswer, string memory description_) {
        decimals = decimals_;
        _description = description_;
        updateAnswer(initialAnswer);
    }

    /// A new round with `answer`, updated now.
    function updateAnswer(int256 answer) public {
        updateRoundData(latestRound + 1, answer, block.timestamp, block.timestamp);
    }

    /// A round with any values (an old `updatedAt` makes the feed stale).
    function updateRoundData(uint80 roundId, int256 answer, uint256 updatedAt, uint256 startedAt) public {
        latestRound = roundId;
        _rounds[roundId] = Round(answer, uint64(startedAt), uint64(updatedAt));
        emit AnswerUpdated(answer, roundId, updatedAt);
    }

    function description() external view override returns (string memory) {
        return _description;
    }

    function version() external pure override returns (uint256) {
        return 4;
    }

    function getRoundData(uint80 roundId)
        public
        view
        override
        returns (uint80, int256, uint256, uint256, uint80)
    {
        Round memory round = _rounds[roundId];
        if (round.updatedAt == 0 && round.answer == 0) revert NoSuchRound(roundId);
        return (roundId, round.answer, round.startedAt, round.updatedAt, roundId);
    }

    function latestRoundData() external view override returns (uint80, int256, uint256, uint256, uint80) {
        Round memory round = _rounds[latestRound];
        return (latestRound, round.answer, round.startedAt, round.updatedAt, latestRound);
    }
}
