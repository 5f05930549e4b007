#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/chat_template.h"

using namespace lowrank;

namespace {

// Templates as published in the models' tokenizer_config.json (JSON "\\n" inside Jinja string
// literals is written "\\n" here too, so Jinja's own escape handling is exercised).

// TinyLlama/TinyLlama-1.1B-Chat-v1.0 (same as HuggingFaceH4/zephyr-7b-beta).
const char* kZephyr =
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}";

// Qwen/Qwen2-7B-Instruct (ChatML with a default system prompt).
const char* kQwen2 =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// Qwen/Qwen2.5-7B-Instruct (the non-tool part), multi-line with whitespace control.
const char* kQwen25 =
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n";

// meta-llama/Llama-2-7b-chat-hf.
const char* kLlama2 =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}";

// mistralai/Mistral-7B-Instruct-v0.1.
const char* kMistral =
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}";

// meta-llama/Meta-Llama-3-8B-Instruct.
const char* kLlama3 =
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
    "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}";

// google/gemma-2b-it / gemma-7b-it.
const char* kGemma =
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}"
    "{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}";

std::string R(const std::string& tmpl, const nlohmann::ordered_json& ctx = nlohmann::ordered_json::object()) {
  return ChatTemplate(tmpl).render_json(ctx);
}

std::string span_text(const RenderedChat& r, size_t k) {
  auto [b, e] = r.assistant_spans.at(k);
  EXPECT_LE(b, e);
  EXPECT_LE(e, r.text.size());
  return r.text.substr(b, e - b);
}

// Expects construction or rendering to throw lowrank::Error whose message contains `needle`.
void expect_error(const std::string& tmpl, const std::string& needle,
                  const nlohmann::ordered_json& ctx = nlohmann::ordered_json::object()) {
  try {
    ChatTemplate t(tmpl);
    t.render_json(ctx);
    ADD_FAILURE() << "no error for template: " << tmpl;
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg;
    EXPECT_EQ(msg.rfind("chat template: ", 0), 0u) << msg;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Real templates

TEST(ChatTemplate, ZephyrTinyLlama) {
  std::vector<ChatMessage> msgs = {{"system", "You are helpful."}, {"user", "Hi"}};
  EXPECT_EQ(render_chat_template(kZephyr, msgs, true, "<s>", "</s>"),
            "<|system|>\nYou are helpful.</s>\n<|user|>\nHi</s>\n<|assistant|>\n");
  EXPECT_EQ(render_chat_template(kZephyr, msgs, false, "<s>", "</s>"),
            "<|system|>\nYou are helpful.</s>\n<|user|>\nHi</s>\n");
  msgs.push_back({"assistant", "Hello!"});
  EXPECT_EQ(render_chat_template(kZephyr, msgs, false, "<s>", "</s>"),
            "<|system|>\nYou are helpful.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n");
  EXPECT_EQ(render_chat_template(kZephyr, {}, true, "<s>", "</s>"), "");
}

TEST(ChatTemplate, ZephyrWithoutHfWhitespaceOptions) {
  // Plain Jinja defaults (no trim_blocks/lstrip_blocks): the newlines after tags survive.
  ChatTemplateOptions o;
  o.trim_blocks = false;
  o.lstrip_blocks = false;
  ChatTemplate t(kZephyr, o);
  EXPECT_EQ(t.render({{"user", "Hi"}}, true, "<s>", "</s>"),
            "\n\n<|user|>\nHi</s>\n\n\n<|assistant|>\n\n");
}

TEST(ChatTemplate, Qwen2ChatML) {
  EXPECT_EQ(render_chat_template(kQwen2, {{"user", "Hi"}}, true, "", "<|im_end|>"),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render_chat_template(kQwen2, {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Yo"}},
                                 false, "", "<|im_end|>"),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nYo<|im_end|>\n");
}

TEST(ChatTemplate, Qwen25WhitespaceControl) {
  EXPECT_EQ(render_chat_template(kQwen25, {{"user", "Hi"}}, true, "", "<|im_end|>"),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render_chat_template(kQwen25, {{"system", "S"}, {"user", "Hi"}, {"assistant", "A"}},
                                 false, "", "<|im_end|>"),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nA<|im_end|>\n");
}

TEST(ChatTemplate, Llama2) {
  std::vector<ChatMessage> msgs = {
      {"system", "S"}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", " Bye "}};
  EXPECT_EQ(render_chat_template(kLlama2, msgs, true, "<s>", "</s>"),
            "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye [/INST]");
  EXPECT_EQ(render_chat_template(kLlama2, {{"user", "Hi"}}, true, "<s>", "</s>"), "<s>[INST] Hi [/INST]");
  try {
    render_chat_template(kLlama2, {{"user", "a"}, {"user", "b"}}, true, "<s>", "</s>");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Conversation roles must alternate user/assistant/user/assistant/..."),
              std::string::npos)
        << e.what();
  }
}

TEST(ChatTemplate, Mistral) {
  EXPECT_EQ(render_chat_template(kMistral, {{"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}},
                                 false, "<s>", "</s>"),
            "<s>[INST] Hi [/INST]Hello</s>[INST] Bye [/INST]");
  EXPECT_THROW(render_chat_template(kMistral, {{"system", "S"}}, false, "<s>", "</s>"), Error);
}

TEST(ChatTemplate, Llama3) {
  EXPECT_EQ(render_chat_template(kLlama3, {{"system", "S"}, {"user", " Hi \n"}}, true,
                                 "<|begin_of_text|>", "<|eot_id|>"),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplate, Gemma) {
  EXPECT_EQ(render_chat_template(kGemma, {{"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}}, true,
                                 "<bos>", "<eos>"),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_THROW(render_chat_template(kGemma, {{"system", "S"}}, true, "<bos>", "<eos>"), Error);
}

TEST(ChatTemplate, ExtraVariablesAndJsonContext) {
  ChatTemplate t(
      "{%- if enable_thinking is defined and enable_thinking is false %}no-think{% endif %}"
      "{{ date_string | default('none') }}|{{ tools is none }}");
  EXPECT_EQ(t.render({}, false, "", ""), "none|True");
  nlohmann::ordered_json extra = {{"enable_thinking", false}, {"date_string", "26 Jul 2024"}};
  EXPECT_EQ(t.render({}, false, "", "", extra), "no-think26 Jul 2024|True");
  nlohmann::ordered_json ctx = {
      {"messages", {{{"role", "assistant"}, {"content", nullptr},
                     {"tool_calls", {{{"name", "f"}, {"arguments", {{"b", 1}, {"a", "x"}}}}}}}}}};
  EXPECT_EQ(R("{% for m in messages %}{% for c in m.tool_calls %}{{ c.name }}({{ c.arguments | tojson }})"
              "{% endfor %}{{ m.content is none }}{% endfor %}",
              ctx),
            "f({\"b\": 1, \"a\": \"x\"})True");
}

// ---------------------------------------------------------------------------------------------
// Language features

TEST(ChatTemplate, WhitespaceControl) {
  EXPECT_EQ(R("a  {%- if true -%}  b  {%- endif -%}  c"), "abc");
  EXPECT_EQ(R("a\n  {{- 'x' -}}  \nb"), "axb");
  EXPECT_EQ(R("{% if true %}\nA\n{% endif %}\n"), "A\n");          // trim_blocks + trailing newline
  EXPECT_EQ(R("  {% if true %}x{% endif %}"), "x");                 // lstrip_blocks at line start
  EXPECT_EQ(R("  {%+ if true %}x{% endif %}"), "  x");              // {%+ disables lstrip
  EXPECT_EQ(R("a  {% if true %}x{% endif %}"), "a  x");             // not at line start
  EXPECT_EQ(R("{% if true +%}\nx{% endif %}"), "\nx");              // +%} disables trim
  EXPECT_EQ(R("x\n    {% if true %}\n    y\n    {% endif %}\nz"), "x\n    y\nz");
  EXPECT_EQ(R("a{# comment #}b\n  {# c #}\nd"), "ab\nd");
  EXPECT_EQ(R("{{ 'a' }}\n{{ 'b' }}"), "a\nb");                     // no trim after {{ }}
  EXPECT_EQ(R("{% raw %}{{ not parsed }}{% endraw %}!"), "{{ not parsed }}!");
  EXPECT_EQ(R("line\r\n{% if true %}\r\nx\r\n{% endif %}"), "line\nx\n");
  ChatTemplateOptions keep;
  keep.keep_trailing_newline = true;
  EXPECT_EQ(ChatTemplate("x\n", keep).render({}, false, "", ""), "x\n");
  EXPECT_EQ(R("x\n"), "x");
}

TEST(ChatTemplate, Loops) {
  EXPECT_EQ(R("{% for x in ['a','b','c'] %}{{ loop.index }}{{ loop.index0 }}{{ x }}"
              "{{ '<' if loop.first }}{{ '>' if loop.last }}{{ loop.length }}{{ loop.revindex }},{% endfor %}"),
            "10a<33,21b32,32c>31,");
  EXPECT_EQ(R("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(R("{% for x in range(10) if x % 2 == 0 %}{{ x }}{% if not loop.last %},{% endif %}{% endfor %}"),
            "0,2,4,6,8");
  EXPECT_EQ(R("{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}"
              "{% endif %}{{ x }}{% endfor %}"),
            "013");
  EXPECT_EQ(R("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"), "a=1;b=2;");
  EXPECT_EQ(R("{% for k, v in d | items %}{{ k }}{{ v }}{% endfor %}", {{"d", {{"x", 1}}}}), "x1");
  EXPECT_EQ(R("{% for x in undefined_thing %}x{% endfor %}ok"), "ok");
  EXPECT_EQ(R("{% for c in 'héy' %}[{{ c }}]{% endfor %}"), "[h][é][y]");
  EXPECT_EQ(R("{% for x in [1,2] %}{% for y in [3,4] %}{{ loop.index }}{% endfor %}{{ loop.index }}{% endfor %}"),
            "121122");
  EXPECT_EQ(R("{% for x in [1,2,3] %}{{ loop.previtem | default('-') }}{{ loop.nextitem | default('-') }} {% endfor %}"),
            "-2 13 2- ");
  EXPECT_EQ(R("{% for x in [1,2,3] %}{{ loop.cycle('a','b') }}{% endfor %}"), "aba");
  // The loop object is only built for bodies that mention `loop`; an outer one stays visible.
  EXPECT_EQ(R("{% for a in [1,2] %}{% for b in 'xy' %}{{ b }}{% endfor %}{{ loop.index }}{% endfor %}"), "xy1xy2");
  EXPECT_EQ(R("{% for a in [1,2] %}{% for b in 'xy' %}{{ loop.index }}{% endfor %}{% endfor %}"), "1212");
  EXPECT_EQ(R("{% set loop = 'outer' %}{% for a in [1] %}{{ a }}{% endfor %}{{ loop }}"), "1outer");
}

TEST(ChatTemplate, ScopingAndNamespace) {
  // set inside a loop does not leak out; namespace attributes do.
  EXPECT_EQ(R("{% set x = 1 %}{% for i in [1,2] %}{% set x = i * 10 %}{{ x }}{% endfor %}{{ x }}"), "10201");
  EXPECT_EQ(R("{% set ns = namespace(found=false, n=0) %}{% for i in [1,2,3] %}{% if i == 2 %}"
              "{% set ns.found = true %}{% endif %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.found }} {{ ns.n }}"),
            "True 6");
  EXPECT_EQ(R("{% if true %}{% set y = 'in-if' %}{% endif %}{{ y }}"), "in-if");
  EXPECT_EQ(R("{% set a, b = 1, 2 %}{{ a }}{{ b }}"), "12");
  EXPECT_EQ(R("{% set block %}  Hi {{ 'there' }}{% endset %}[{{ block | trim }}]"), "[Hi there]");
  expect_error("{% set x = 1 %}{% set x.y = 2 %}", "non-namespace");
}

TEST(ChatTemplate, Macros) {
  EXPECT_EQ(R("{% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}"
              "{{ greet('A') }} {{ greet('B', '?') }} {{ greet(punct='.', name='C') }}"),
            "Hello A! Hello B? Hello C.");
  EXPECT_EQ(R("{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(3) }}"), "321");
  expect_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "nested too deeply");
}

TEST(ChatTemplate, Expressions) {
  EXPECT_EQ(R("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }}"),
            "7 9 3 -4 1 2 1024");
  EXPECT_EQ(R("{{ 7 / 2 }} {{ 1.5 + 1 }} {{ 10 / 5 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e-5 }}"),
            "3.5 2.5 2.0 0.30000000000000004 1e+20 1e-05");
  EXPECT_EQ(R("{{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' * 3 }} {{ [1, 'x', none, true] }} {{ {'k': 'v'} }}"),
            "a1NoneTrue ababab [1, 'x', None, True] {'k': 'v'}");
  EXPECT_EQ(R("{{ 'yes' if 1 < 2 < 3 else 'no' }} {{ 'yes' if 3 > 2 > 2 else 'no' }} {{ 'x' if false }}|"),
            "yes no |");
  EXPECT_EQ(R("{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'z' not in 'abc' }} {{ not 1 }}"),
            "True True True True False");
  EXPECT_EQ(R("{{ 0 or 'x' }} {{ 1 and 'y' }} {{ '' or [] or 'z' }} {{ none == none }} {{ 1 == 1.0 }} {{ 1 == '1' }}"),
            "x y z True True False");
  EXPECT_EQ(R("{{ [1, 2, 3, 4][1:] }} {{ [1, 2, 3][::-1] }} {{ 'hello'[1:3] }} {{ 'hello'[-1] }} {{ [1, 2, 3][-2] }}"),
            "[2, 3, 4] [3, 2, 1] el o 2");
  EXPECT_EQ(R("{{ 'héllo'[::-1] }} {{ 'héllo' | length }} {{ [1,2,3,4,5][1:-1:2] }}"), "olléh 5 [2, 4]");
  EXPECT_EQ(R("{{ m.role }} {{ m['content'] }} {{ m.missing is defined }} {{ xs.0 }}",
              {{"m", {{"role", "user"}, {"content", "c"}}}, {"xs", {"first"}}}),
            "user c False first");
  EXPECT_EQ(R("{{ \"dq\" 'sq' }} {{ 'it\\'s' }} {{ 'tab\\there' }} {{ '\\u00e9' }}"), "dqsq it's tab\there é");
  EXPECT_EQ(R("{{ x }}|{{ x is defined }}|{{ x is not defined }}|{{ none is none }}|{{ 's' is string }}"),
            "|False|True|True|True");
  EXPECT_EQ(R("{{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 1 is number }} {{ {} is mapping }}"),
            "True True True True True");
  EXPECT_EQ(R("{{ true is boolean }} {{ 1 is integer }} {{ 'A' is upper }} {{ x is eq 3 }} {{ 2 is in [1, 2] }}",
              {{"x", 3}}),
            "True True True True True");
}

TEST(ChatTemplate, FiltersAndMethods) {
  EXPECT_EQ(R("[{{ '  a b  ' | trim }}] {{ 'aB' | upper }} {{ 'aB' | lower }} {{ [1,2,3] | length }} "
              "{{ [1,2] | first }} {{ [1,2] | last }} {{ 'abc' | first }}"),
            "[a b] AB ab 3 1 2 a");
  EXPECT_EQ(R("{{ x | default('d') }} {{ '' | default('d') }} {{ '' | default('d', true) }} {{ x | d(1) }}"),
            "d  d 1");
  EXPECT_EQ(R("{{ {'a': [1, 2.5, 'é\"'], 'b': none, 'c': true} | tojson }}"),
            "{\"a\": [1, 2.5, \"é\\\"\"], \"b\": null, \"c\": true}");
  EXPECT_EQ(R("{{ {'a': [1, {}], 'b': []} | tojson(indent=2) }}"),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}");
  EXPECT_EQ(R("{{ 'é' | tojson(ensure_ascii=true) }} {{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}"),
            "\"\\u00e9\" {\"a\": 2, \"b\": 1}");
  EXPECT_EQ(R("{{ ['a', 'b'] | join(', ') }} {{ [1, 2] | join }} {{ '1' | int + 1 }} {{ 'x' | int }} {{ 3 | float }}"),
            "a, b 12 2 0 3.0");
  EXPECT_EQ(R("{{ 'aXbX' | replace('X', '-') }} {{ 'abc' | list }} {{ [3, 1, 2] | sort }} {{ [1, 1, 2] | unique }}"),
            "a-b- ['a', 'b', 'c'] [1, 2, 3] [1, 2]");
  EXPECT_EQ(R("{{ [3, 1, 2] | max }} {{ [3, 1, 2] | min }} {{ [1, 2, 3] | sum }} {{ -3 | abs }} {{ 2.5 | round }}"),
            "3 1 6 3 2.0");
  EXPECT_EQ(R("{{ 'hello world' | title }} {{ 'hello' | capitalize }} {{ '<a>' | e }} {{ [1,2] | reverse }}"),
            "Hello World Hello &lt;a&gt; [2, 1]");
  nlohmann::ordered_json msgs = {{"messages",
                                  {{{"role", "system"}, {"content", "s"}},
                                   {{"role", "user"}, {"content", "u1"}},
                                   {{"role", "user"}, {"content", "u2"}}}}};
  EXPECT_EQ(R("{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }} "
              "{{ messages | rejectattr('role', 'eq', 'user') | list | length }} "
              "{{ messages | map(attribute='role') | unique | list }} {{ [0, 1, 2] | select('odd') | list }}",
              msgs),
            "u1,u2 1 ['system', 'user'] [1]");
  EXPECT_EQ(R("{{ 'a\\nb' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}"), "a\n  b|  a\n  b");
  EXPECT_EQ(R("[{{ '  x  '.strip() }}] [{{ 'xxhixx'.strip('x') }}] [{{ '\\n\\nhi'.lstrip('\\n') }}] [{{ 'hi  '.rstrip() }}]"),
            "[x] [hi] [hi] [hi]");
  EXPECT_EQ(R("{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith('bc') }} {{ 'abc'.startswith(('x', 'a')) }} "
              "{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a.b.c'.rsplit('.', 1) }}"),
            "True True True ['a', 'b', '', 'c'] ['a', 'b'] ['a', 'b c'] ['a.b', 'c']");
  EXPECT_EQ(R("{{ 'abc'.upper() }} {{ 'a-b'.replace('-', '+') }} {{ ', '.join(['x', 'y']) }} {{ 'abcb'.find('b') }} "
              "{{ 'abcb'.count('b') }} {{ {'a': 1}.get('a') }} {{ {'a': 1}.get('z', 0) }} {{ {'a': 1}.keys() | list }}"),
            "ABC a+b x, y 1 2 1 0 ['a']");
  EXPECT_EQ(R("{{ '<think>r</think>\\n\\nans'.split('</think>')[-1].lstrip('\\n') }}"), "ans");
}

// ---------------------------------------------------------------------------------------------
// Errors: always lowrank::Error with a location, never a crash.

TEST(ChatTemplate, SyntaxErrors) {
  expect_error("{% if x %}abc", "unclosed 'if' block");
  expect_error("{% for x in y %}abc{% endif %}", "unexpected '{% endif %}'");
  expect_error("{{ x ", "unclosed tag '{{'");
  expect_error("abc {% if true ", "unclosed tag '{%'");
  expect_error("{{ 'abc }}", "unclosed string");
  expect_error("{# never closed", "unclosed comment");
  expect_error("{{ x | nosuchfilter }}", "unknown filter 'nosuchfilter'");
  expect_error("{{ x is nosuchtest }}", "unknown test 'nosuchtest'");
  expect_error("{% frobnicate %}", "unknown tag 'frobnicate'");
  expect_error("{% include 'x.html' %}", "unsupported tag 'include'");
  expect_error("{% endif %}", "unexpected '{% endif %}'");
  expect_error("{% break %}", "outside of a loop");
  expect_error("{{ (1 + }}", "unexpected '}'");
  expect_error("{{ }}", "empty expression");
  expect_error("{{ 1 + }}", "unexpected");
  expect_error("{{ a b }}", "expected '}}'");
  expect_error("{{ 99999999999999999999 }}", "integer literal too large");
  expect_error("{% raw %}abc", "unclosed 'raw' block");
  expect_error("{{ x $ y }}", "unexpected character '$'");
  try {
    ChatTemplate t("line one\n{{ 'ok' }}\n  {{ x | bogus }}");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("at line 3 col 10"), std::string::npos) << e.what();
  }
}

TEST(ChatTemplate, RuntimeErrors) {
  expect_error("{{ foo.bar }}", "'foo' is undefined");
  expect_error("{{ messages[0]['role'] }}", "'list object' has no element 0", {{"messages", nlohmann::ordered_json::array()}});
  expect_error("{{ 1 // 0 }}", "division by zero");
  expect_error("{{ 1 % 0 }}", "modulo by zero");
  expect_error("{{ 'a' + 1 }}", "unsupported operand types for +: 'str' and 'int'");
  expect_error("{{ 'a' < 1 }}", "not supported between instances");
  expect_error("{{ raise_exception('custom failure') }}", "raise_exception: custom failure");
  expect_error("{{ nosuchfn() }}", "'nosuchfn' is undefined");
  expect_error("{{ 'a'.nosuchmethod() }}", "unknown method str.nosuchmethod()");
  expect_error("{{ [1].append(2) }}", "not allowed");
  expect_error("{{ 9223372036854775807 + 1 }}", "integer overflow");
  expect_error("{{ 'ab' * 1000000000 }}", "string too long");
  expect_error("{% for i in range(100000000) %}{% endfor %}", "range() too long");
  expect_error("{% for i in range(2000) %}{% for j in range(2000) %}{% endfor %}{% endfor %}",
               "execution limit");
  expect_error("{{ {'a': 1} | tojson(indent=x.y) }}", "'x' is undefined");
  expect_error("{% for a, b in [1, 2] %}{% endfor %}", "not iterable");
  expect_error("{{ 'x' | trim(1, 2, 3) }}", "at most 1 argument");
}

TEST(ChatTemplate, PathologicalInputsDoNotCrash) {
  std::string deep_parens = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  expect_error(deep_parens, "nested too deeply");
  expect_error("{{ " + std::string(100000, '-') + "1 }}", "nested too deeply");
  std::string nots = "{{ ";
  for (int k = 0; k < 5000; k++) nots += "not ";
  expect_error(nots + "x }}", "nested too deeply");
  std::string sum = "{{ 1";
  for (int k = 0; k < 5000; k++) sum += " + 1";
  expect_error(sum + " }}", "nested too deeply");
  std::string ifs;
  for (int k = 0; k < 2000; k++) ifs += "{% if true %}";
  expect_error(ifs, "nested too deeply");
  std::string lists = "{{ " + std::string(3000, '[') + std::string(3000, ']') + " }}";
  expect_error(lists, "nested too deeply");
  // Deep macro recursion x deep expressions is stopped by the recursion budget.
  std::string open(38, '['), close(38, ']');
  expect_error("{% macro f(n) %}{% if n > 0 %}{{ " + open + "f(n - 1)" + close +
                   " | length }}{% endif %}{% endmacro %}{{ f(31) }}",
               "recursion too deep");
}

TEST(ChatTemplate, FuzzRealTemplatesOnlyThrowError) {
  const char* bases[] = {kZephyr, kQwen2, kQwen25, kLlama2, kMistral, kLlama3, kGemma};
  const std::string alphabet = "{}%#-+()[]'\".,|:=<>!~*/ \nabcdefinorstuxy0129_";
  std::mt19937 rng(12345);
  std::vector<ChatMessage> msgs = {{"system", "S"}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}};
  int rendered = 0, errors = 0;
  for (int iter = 0; iter < 3000; iter++) {
    std::string t = bases[iter % 7];
    int edits = 1 + int(rng() % 4);
    for (int k = 0; k < edits && !t.empty(); k++) {
      size_t p = rng() % t.size();
      switch (rng() % 4) {
        case 0: t.erase(p, 1 + rng() % 8); break;
        case 1: t.insert(p, 1, alphabet[rng() % alphabet.size()]); break;
        case 2: t[p] = alphabet[rng() % alphabet.size()]; break;
        default: t.resize(p); break;
      }
    }
    try {
      ChatTemplate ct(t);
      ct.render(msgs, true, "<s>", "</s>");
      auto r = ct.render_with_spans(msgs, "<s>", "</s>");
      for (auto [b, e] : r.assistant_spans) {
        ASSERT_LE(b, e);
        ASSERT_LE(e, r.text.size());
      }
      rendered++;
    } catch (const Error&) {
      errors++;
    }
  }
  EXPECT_GT(rendered, 100);
  EXPECT_GT(errors, 100);
}

// ---------------------------------------------------------------------------------------------
// Assistant spans for loss masking

TEST(ChatTemplate, SpansZephyr) {
  std::vector<ChatMessage> msgs = {{"system", "S"}, {"user", "Hi"}, {"assistant", "Hello"},
                                   {"user", "More"}, {"assistant", "Sure thing"}};
  RenderedChat r = render_chat_with_spans(kZephyr, msgs, "<s>", "</s>");
  EXPECT_EQ(r.text, render_chat_template(kZephyr, msgs, false, "<s>", "</s>"));
  ASSERT_EQ(r.assistant_spans.size(), 2u);
  EXPECT_EQ(span_text(r, 0), "Hello</s>");
  EXPECT_EQ(span_text(r, 1), "Sure thing</s>");
  EXPECT_EQ(r.text.substr(0, r.assistant_spans[0].first), "<|system|>\nS</s>\n<|user|>\nHi</s>\n<|assistant|>\n");
}

TEST(ChatTemplate, SpansChatMLAndLlama) {
  std::vector<ChatMessage> msgs = {{"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}, {"assistant", "Ciao"}};
  RenderedChat q = render_chat_with_spans(kQwen2, msgs, "", "<|im_end|>");
  ASSERT_EQ(q.assistant_spans.size(), 2u);
  EXPECT_EQ(span_text(q, 0), "Hello<|im_end|>");
  EXPECT_EQ(span_text(q, 1), "Ciao<|im_end|>");
  // With an eos that the template does not put after the content, only the content is covered.
  RenderedChat q2 = render_chat_with_spans(kQwen2, msgs, "", "<|endoftext|>");
  EXPECT_EQ(span_text(q2, 0), "Hello");

  std::vector<ChatMessage> lm = {{"system", "S"}, {"user", "Hi"}, {"assistant", "  Hello  "},
                                 {"user", "Bye"}, {"assistant", "Ciao"}};
  RenderedChat l2 = render_chat_with_spans(kLlama2, lm, "<s>", "</s>");
  EXPECT_EQ(span_text(l2, 0), "Hello </s>");  // content.strip(), then ' ' + eos
  EXPECT_EQ(span_text(l2, 1), "Ciao </s>");
  EXPECT_EQ(l2.text, "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye [/INST] Ciao </s>");

  RenderedChat l3 = render_chat_with_spans(kLlama3, {{"user", "Hi"}, {"assistant", "\n Hello \n"}},
                                           "<|begin_of_text|>", "<|eot_id|>");
  EXPECT_EQ(span_text(l3, 0), "Hello<|eot_id|>");  // | trim keeps provenance; content went through {% set %}

  RenderedChat g = render_chat_with_spans(kGemma, {{"user", "Hi"}, {"assistant", "Hello"}}, "<bos>", "<eos>");
  EXPECT_EQ(span_text(g, 0), "Hello");

  RenderedChat m = render_chat_with_spans(kMistral, {{"user", "Hi"}, {"assistant", "Hello"}}, "<s>", "</s>");
  EXPECT_EQ(span_text(m, 0), "Hello</s>");
  EXPECT_EQ(m.assistant_spans[0].first, std::string("<s>[INST] Hi [/INST]").size());
}

TEST(ChatTemplate, SpansEdgeCases) {
  // Empty content still marks its position (and picks up the eos).
  RenderedChat r = render_chat_with_spans(kZephyr, {{"user", "Hi"}, {"assistant", ""}}, "<s>", "</s>");
  EXPECT_EQ(span_text(r, 0), "</s>");
  EXPECT_EQ(r.assistant_spans[0].first, std::string("<|user|>\nHi</s>\n<|assistant|>\n").size());

  // Content identical to a user message: positions come from provenance, not string search.
  RenderedChat d = render_chat_with_spans(kQwen2, {{"user", "same"}, {"assistant", "same"}}, "", "<|im_end|>");
  EXPECT_EQ(d.assistant_spans[0].first, d.text.rfind("same"));

  // Reasoning split (Qwen3 style): only the part of the content that is emitted is covered.
  const char* think =
      "{%- for message in messages %}\n"
      "{%- if message.role == 'assistant' %}\n"
      "{%- set content = message.content %}\n"
      "{%- if '</think>' in content %}\n"
      "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n"
      "{%- endif %}\n"
      "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}\n"
      "{%- else %}\n"
      "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
      "{%- endif %}\n"
      "{%- endfor %}\n";
  RenderedChat t = render_chat_with_spans(think, {{"user", "Q"}, {"assistant", "<think>\nhmm\n</think>\n\nAnswer"}},
                                          "", "<|im_end|>");
  EXPECT_EQ(t.text, "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nAnswer<|im_end|>\n");
  EXPECT_EQ(span_text(t, 0), "Answer<|im_end|>");

  // Content passed through a macro.
  RenderedChat mc = render_chat_with_spans(
      "{% macro turn(m) %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endmacro %}"
      "{% for m in messages %}{{ turn(m) }}{% endfor %}",
      {{"user", "u"}, {"assistant", "a1"}}, "", "</assistant>");
  EXPECT_EQ(span_text(mc, 0), "a1</assistant>");

  // Assistant content the template never emits: empty span at the end.
  RenderedChat none = render_chat_with_spans("{% for m in messages %}{{ m.role }}{% endfor %}",
                                             {{"user", "u"}, {"assistant", "a"}}, "", "");
  ASSERT_EQ(none.assistant_spans.size(), 1u);
  EXPECT_EQ(none.assistant_spans[0], std::make_pair(none.text.size(), none.text.size()));

  // {% generation %} blocks (HF assistant-mask templates) define the spans directly.
  ChatTemplate gen(
      "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}"
      "{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>"
      "{% endif %}\n{% endfor %}");
  EXPECT_TRUE(gen.uses_generation_blocks());
  RenderedChat gr = gen.render_with_spans({{"user", "u"}, {"assistant", "a"}, {"user", "v"}, {"assistant", "b"}}, "", "");
  ASSERT_EQ(gr.assistant_spans.size(), 2u);
  EXPECT_EQ(span_text(gr, 0), "a<|im_end|>");
  EXPECT_EQ(span_text(gr, 1), "b<|im_end|>");

  // JSON context: assistant messages with non-string content (tool calls) count but stay empty.
  nlohmann::ordered_json ctx = {{"eos_token", "</s>"},
                                {"messages",
                                 {{{"role", "user"}, {"content", "u"}},
                                  {{"role", "assistant"}, {"content", nullptr}},
                                  {{"role", "assistant"}, {"content", "x"}}}}};
  RenderedChat j = ChatTemplate("{% for m in messages %}[{{ m.content if m.content is string }}]{{ eos_token }}{% endfor %}")
                       .render_json_with_spans(ctx);
  ASSERT_EQ(j.assistant_spans.size(), 2u);
  EXPECT_EQ(j.assistant_spans[0].first, j.assistant_spans[0].second);
  EXPECT_EQ(span_text(j, 1), "x");  // ']' sits between the content and the eos
}
