// Compiles one Solidity file with solc-js (node_modules/solc) and prints its contract's ABI and
// creation bytecode as JSON on stdout: {"solc": version, "abi": [...], "bytecode": "0x..."}.
// Usage: node tests/chain/compile.js <file.sol> <ContractName>
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const [file, contract] = process.argv.slice(2);
if (!file || !contract) {
  process.stderr.write("usage: node compile.js <file.sol> <ContractName>\n");
  process.exit(2);
}
const name = path.basename(file);
const input = {
  language: "Solidity",
  sources: { [name]: { content: fs.readFileSync(file, "utf8") } },
  settings: {
    // ganache 7.9.2 runs at most shanghai; solc's newer default target emits opcodes it rejects.
    evmVersion: "shanghai",
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { [name]: { [contract]: ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length > 0) {
  process.stderr.write(errors.map((e) => e.formattedMessage || e.message).join("\n") + "\n");
  process.exit(1);
}
const compiled = output.contracts && output.contracts[name] && output.contracts[name][contract];
if (!compiled) {
  process.stderr.write(`no contract ${contract} in ${file}\n`);
  process.exit(1);
}
process.stdout.write(JSON.stringify({
  solc: solc.version(),
  abi: compiled.abi,
  bytecode: "0x" + compiled.evm.bytecode.object,
}));
