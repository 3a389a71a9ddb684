// Writes tests/fixtures/gpt2_vectors.json: GPT-2 token ids from an independent reference
// implementation (js-tiktoken's bundled "gpt2" ranks), for tests/test_bpe.cpp to compare with.
//
// Rerun (needs Node >= 18 and the npm registry; nothing is installed into the repo):
//   npm install --prefix /tmp/bpefix js-tiktoken@1.0.21
//   node scripts/make_bpe_fixture.mjs [/tmp/bpefix]
// The tiny-shakespeare vector reads ../shared/data/tinyshakespeare.txt next to the repo
// ($LINEARNEXUS_SHARED_DATA overrides the folder).
//
// Each vector is {text, ids}; ids are what BPETokenizer::encode gives ("<|endoftext|>" is the
// special token 50256). A vector with "ordinary": true is encode_ordinary instead (the special
// token's text is plain text). Texts stay clear of the few characters whose "whitespace" status
// differs between JavaScript, PCRE2 and Python's regex module (U+0085, U+180E, U+FEFF).
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..");
const modules = process.argv[2] ?? "/tmp/bpefix";
const require = createRequire(join(modules, "node_modules", "noop.js"));
const { getEncoding } = require("js-tiktoken");
const { version } = JSON.parse(readFileSync(join(modules, "node_modules", "js-tiktoken", "package.json"), "utf8"));
const enc = getEncoding("gpt2");

const sharedData = process.env.LINEARNEXUS_SHARED_DATA ?? join(repo, "..", "shared", "data");
const shakespeare = readFileSync(join(sharedData, "tinyshakespeare.txt"), "utf8");
// The first ~1 KB, cut at a blank line so the paragraph ends cleanly.
const paragraph = shakespeare.slice(0, shakespeare.indexOf("\n\n", 1000) + 2);

const texts = [
  // plain ASCII
  "",
  "Hello, world!",
  "The quick brown fox jumps over the lazy dog.",
  "GPT-2 is a large transformer-based language model with 1.5 billion parameters.",
  "supercalifragilisticexpialidocious antidisestablishmentarianism",
  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
  // contractions: lowercase ones are pre-tokenizer pieces of their own, uppercase ones are not
  "I'm sure you'll see it's what they've done, and we're glad he'd come; don't.",
  "IT'S JOHN'S CAR. I'M HERE, WE'LL GO, YOU'D SAY THEY'RE SURE WE'VE WON, DON'T.",
  "'s't're've'm'll'd 'S 'T 'Re 'VE 'M 'LL 'D",
  "Mixed CASE and MiXeD it'S O'Neill rock'n'roll",
  // numbers
  "In 2019, 1234567890 people paid $3.14 for 42 items (i.e. 0.5%) on 2024-01-31.",
  "Unicode digits: ١٢٣ ४५६ ½ ² Ⅻ",
  // whitespace runs
  "a  b   c    d     e",
  "trailing spaces   ",
  "   leading spaces",
  "     ",
  "\n\n\n",
  "line one\nline two\n\nline four\n",
  "\tindented\twith\ttabs\t\t",
  " \t \n  \r\n x \n ",
  "no-break\u00a0space and em\u2003space\u3000ideographic",
  // accents, other scripts
  "café naïve Zürich façade résumé",
  "Ærøskøbing, São Paulo, Kraków, İstanbul, Straße",
  "decomposed e\u0301 and n\u0303 accents",
  "日本語のテキストです。",
  "中文分词测试，你好世界！",
  "안녕하세요 세계",
  "Привет, мир! Καλημέρα κόσμε",
  "مرحبا بالعالم שלום עולם",
  // emoji, including multi-code-point sequences
  "I love 🍕 and 🎉!",
  "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 thumbs, 🇯🇵 flag",
  "mixed: naïve café 日本 🍕 123",
  // punctuation and code
  "Wait... what?!?! --- (yes) [no] {maybe} <html> && || :: ;;",
  "def f(x):\n    return x**2  # square\n",
  "https://example.com/path?q=1&r=two#frag user@example.org",
  "control \u0000\u0001 bell\u0007 chars",
  // the special token
  "<|endoftext|>",
  "Hello<|endoftext|>World",
  "first doc.<|endoftext|>\n\nsecond doc.<|endoftext|><|endoftext|>",
  "almost special: <|endoftext| and <|endoftext and endoftext|>",
  // a paragraph of the training corpus
  paragraph,
];

const vectors = texts.map((text) => ({ text, ids: enc.encode(text, "all") }));
// encode_ordinary: the special token's text is split like any other text.
for (const text of ["a <|endoftext|> b", "<|endoftext|>"])
  vectors.push({ text, ordinary: true, ids: enc.encode(text, [], []) });

const out = join(repo, "tests", "fixtures", "gpt2_vectors.json");
// One vector per line: small, and diffs show which texts changed.
const json =
  `{"generator": ${JSON.stringify(`js-tiktoken@${version} getEncoding("gpt2")`)},\n"vectors": [\n` +
  vectors.map((v) => JSON.stringify(v)).join(",\n") +
  "\n]}";
writeFileSync(out, json + "\n");
console.log(`wrote ${vectors.length} vectors (${json.length} bytes) to ${out}`);
