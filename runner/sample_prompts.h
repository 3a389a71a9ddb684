#pragma once
// `linearnexus sample --prompts FILE`: many prompts through continuous batching (decode_stream.h),
// each answered as `sample --prompt` with its own seed would answer it alone.
#include <string>

#include "linearnexus/generate.h"

namespace linearnexus {

class LMModel;
class Registry;
class Tokenizer;
struct SampleSettings;

// The sample section's temperature, top_k, top_p and max_tokens as the decoder's settings.
SamplingParams sampling_params(const SampleSettings& settings);

// `text` as one user message in the tokenizer's chat template, with the assistant's turn opened (what
// `sample --chat` and `sample --prompts` with sample.chat decode from); errors name `where`.
std::string render_user_message(const Tokenizer& tokenizer, const std::string& text, const std::string& where);

// FILE: one prompt per line (empty lines skipped), or a .jsonl file of {"prompt": TEXT} or
// {"messages": [...]} rows (the latter rendered with the chat template, as `data chat-render
// --add-generation-prompt` renders them). With sample.chat, a plain line is one user message. Prompt i
// (from 0) is drawn with seed + i: what `sample --prompt P --seed S+i --num-samples 1` draws. Writes
// one JSON line per prompt, in the file's order, to `output` (atomically, at the end) or stdout:
// {"index", "prompt", "completion", "finish_reason": "stop" | "length", "completion_tokens"}.
int sample_prompts_file(const LMModel& model, const Registry& registry, const Tokenizer& tokenizer,
                        const SampleSettings& settings, uint64_t seed, const std::string& prompts_path,
                        const std::string& output, int64_t max_batch);

}  // namespace linearnexus
