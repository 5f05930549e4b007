// Chat templates: a small, self-contained interpreter for the subset of Jinja2 used by the
// `chat_template` of Hugging Face tokenizer_config.json / GGUF `tokenizer.chat_template`.
//
// The environment mirrors transformers' apply_chat_template: trim_blocks and lstrip_blocks on,
// a single trailing newline of the template dropped, loop controls ({% break %}/{% continue %})
// enabled, globals raise_exception(msg), range(), namespace(), strftime_now(fmt), and a tojson
// filter that behaves like json.dumps(ensure_ascii=False) (", " / ": " separators).
//
// Supported syntax:
//   text, {{ expr }}, {# comments #}, whitespace control {%- -%} {{- -}} {#- -#}, {%+ / +%},
//   {% if %}/{% elif %}/{% else %}/{% endif %},
//   {% for a[, b] in expr [if cond] %} ... [{% else %}] {% endfor %} with loop.index, index0,
//     revindex, revindex0, first, last, length, previtem, nextitem; {% break %}, {% continue %},
//   {% set x = expr %}, {% set a, b = expr %}, {% set ns.attr = expr %}, {% set x %}...{% endset %},
//   {% macro name(a, b=default) %}...{% endmacro %} and calls, {% raw %}...{% endraw %},
//   {% generation %}...{% endgeneration %} (HF's assistant-mask marker; see spans below).
// Expressions: string/int/float/bool/none literals, list/tuple/dict literals, variables,
//   attribute and item access (m.role, m['role'], xs[-1]), Python slices (xs[1:], s[::-1]),
//   + - * / // % ** ~, unary -, ==, !=, <, >, <=, >= (chained), in / not in, and/or/not,
//   `a if cond else b`, filters (x | f, x | f(args)), tests (x is [not] t [arg]), calls.
// Filters: trim, upper, lower, capitalize, title, length/count, default/d, tojson, first, last,
//   join, string, int, float, abs, round, replace, list, items, safe, escape/e, reverse, sort,
//   unique, map, select, reject, selectattr, rejectattr, min, max, sum, indent.
// Tests: defined, undefined, none, string, number, integer, float, boolean, true, false,
//   mapping, iterable, sequence, callable, eq/equalto/==, ne/!=, lt/<, le/<=, gt/>, ge/>=, in,
//   odd, even, divisibleby, lower, upper, sameas.
// Methods: str.strip/lstrip/rstrip([chars]), startswith/endswith(str or tuple), split/rsplit,
//   splitlines, upper, lower, title, capitalize, replace, find, rfind, count, join, isdigit,
//   isspace, isalpha, isalnum, islower, isupper; dict.items/keys/values/get.
// Values follow Jinja/Python semantics: undefined prints as "" and is falsy, iterating it gives
// nothing, but reading an attribute/item of it is an error; empty strings/lists/dicts, 0 and
// none are falsy; lengths and indices on strings count Unicode code points.
//
// Every problem (syntax error, unsupported feature, undefined access, raise_exception, runaway
// template) throws lowrank::Error("chat template: <what>, at line L col C"); malformed templates
// never crash. Execution is bounded (nesting depth, steps, output size); the worst-case
// template needs < 512 KiB of stack, so rendering on any ordinary thread is safe.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace lowrank {

struct ChatMessage {
  std::string role;
  std::string content;
};

// The roles chat templates are written for: system, user, assistant, tool. Other roles are
// refused before rendering (templates silently drop or mis-render roles they do not know).
bool is_known_chat_role(const std::string& role);
const char* known_chat_roles();  // "system, user, assistant, tool", for messages

// Rendered text plus, for each assistant message (in order), the [begin, end) byte range of
// its content in `text`, extended over the end-of-turn token (see render_with_spans).
struct RenderedChat {
  std::string text;
  std::vector<std::pair<size_t, size_t>> assistant_spans;
};

struct ChatTemplateOptions {
  bool trim_blocks = true;             // drop the first newline after a block/comment tag
  bool lstrip_blocks = true;           // strip spaces/tabs before a block/comment tag at line start
  bool keep_trailing_newline = false;  // keep a single trailing newline of the template source
};

// A parsed template; parse once, render many times (render is const and thread-safe).
class ChatTemplate {
 public:
  // Parses the template; throws lowrank::Error on syntax errors, unknown filters/tests/tags.
  explicit ChatTemplate(const std::string& source, ChatTemplateOptions opts = {});
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // Variables: messages (list of {role, content}), add_generation_prompt, bos_token, eos_token,
  // and, in the overload taking `extra`, every key of that JSON object (e.g. tools,
  // enable_thinking, date_string); the named arguments win over keys of `extra`.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     const std::string& bos_token, const std::string& eos_token) const;
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     const std::string& bos_token, const std::string& eos_token,
                     const nlohmann::ordered_json& extra) const;
  // Fully general: every key of the JSON object `context` becomes a template variable
  // (messages may then carry tool_calls etc.). ordered_json keeps key order for tojson, as
  // Python dicts do; a nlohmann::json converts implicitly (its keys come out sorted).
  // Unless given, `tools` and `documents` are none (as apply_chat_template passes them).
  std::string render_json(const nlohmann::ordered_json& context) const;

  // Renders with add_generation_prompt = false and locates the assistant messages.
  //
  // Method: output-position tracking. Each assistant message's content string carries a
  // provenance record; string operations that keep (part of) the content — concatenation with
  // + or ~, {% set %}, trim/strip/lstrip/rstrip, split, slicing with step 1, upper/lower, join,
  // macro and {% set %} block captures — carry the record along, shifted/clipped, and when a
  // string is written to the output the recorded ranges are mapped to output byte positions.
  // Unlike rendering with marker strings this keeps templates that inspect the content
  // (startswith, split('</think>'), `in`, ...) behaving exactly as in a normal render.
  // For message k the span is [first, last) over all output bytes that came from its content
  // (an empty content still marks its position). If the text right after the span is optional
  // whitespace followed by eos_token, the span is extended to include it (e.g. "Hello</s>",
  // " Hello </s>"). A message whose content never reaches the output gets the empty span
  // {text.size(), text.size()}.
  // If the template uses {% generation %} blocks (as HF templates for assistant masks do),
  // the spans are instead exactly the output ranges of those blocks, in order.
  RenderedChat render_with_spans(const std::vector<ChatMessage>& messages,
                                 const std::string& bos_token, const std::string& eos_token) const;
  // Same with the context as JSON (assistant messages: role == "assistant" with a string
  // content); uses context["eos_token"] for the extension, add_generation_prompt as given.
  RenderedChat render_json_with_spans(const nlohmann::ordered_json& context) const;

  bool uses_generation_blocks() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One-shot helpers (parse + render).
std::string render_chat_template(const std::string& tmpl, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt, const std::string& bos_token,
                                 const std::string& eos_token);
RenderedChat render_chat_with_spans(const std::string& tmpl,
                                    const std::vector<ChatMessage>& messages,
                                    const std::string& bos_token, const std::string& eos_token);

}  // namespace lowrank
