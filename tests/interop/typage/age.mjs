// A small age command line on typage (npm "age-encryption"), for tests/crypto/test_age_typage.py:
//   node age.mjs keygen-pq                 -> identity line, then recipient line
//   node age.mjs recipient IDENTITY        -> the recipient of an identity string
//   node age.mjs encrypt RECIPIENT [armor] < plain > age file
//   node age.mjs decrypt IDENTITY          < age file (binary or armored) > plain
import * as age from "age-encryption";
import { readFileSync, writeSync } from "node:fs";

const [cmd, arg, flag] = process.argv.slice(2);
const stdin = () => new Uint8Array(readFileSync(0));
const out = (bytes) => {
  for (let off = 0; off < bytes.length; ) off += writeSync(1, bytes, off);
};

if (cmd === "keygen-pq") {
  const id = await age.generateHybridIdentity();
  console.log(id);
  console.log(await age.identityToRecipient(id));
} else if (cmd === "recipient") {
  console.log(await age.identityToRecipient(arg));
} else if (cmd === "encrypt") {
  const e = new age.Encrypter();
  e.addRecipient(arg);
  const ct = await e.encrypt(stdin());
  out(flag === "armor" ? new TextEncoder().encode(age.armor.encode(ct)) : ct);
} else if (cmd === "decrypt") {
  const d = new age.Decrypter();
  d.addIdentity(arg);
  let data = stdin();
  const text = new TextDecoder().decode(data.subarray(0, 64));
  if (text.trimStart().startsWith("-----BEGIN")) data = age.armor.decode(new TextDecoder().decode(data));
  out(await d.decrypt(data));
} else {
  console.error(`unknown command ${cmd}`);
  process.exit(2);
}
