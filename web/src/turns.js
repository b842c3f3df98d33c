// One turn on the page: the user's message, the reply, and how it ended.
import { render } from "./markdown.js";

const STATES = {
  truncated: "Cut short by the token limit.",
  interrupted: "Stopped. This reply is not part of what the model remembers.",
  failed: "Failed. Nothing of it is part of what the model remembers.",
  refused: "The model declined to answer.",
  // Still running (its stream was lost, or another tab sent it): the stored turn ends on its own.
  streaming: "Still being written. Reload to see the rest.",
};

export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function money(usd) {
  if (usd === null || usd === undefined) return "";
  if (usd === 0) return "$0";
  if (usd < 0.01) return "$" + usd.toFixed(4);
  return "$" + usd.toFixed(2);
}

function tokens(usage) {
  const input = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens;
  const mark = usage.estimated ? "~" : "";
  return `${mark}${input.toLocaleString()} in · ${mark}${usage.output_tokens.toLocaleString()} out`;
}

// The user's text, the reply's text and its tool calls, from a stored turn.
export function partsOf(turn) {
  const user = turn.messages.find((m) => m.role === "user");
  const reply = [];
  const tools = [];
  for (const message of turn.messages) {
    if (message.role !== "assistant") continue;
    for (const part of message.parts) {
      if (part.type === "text") reply.push(part.text);
      else if (part.type === "tool_call") tools.push(part.name);
    }
  }
  return { user: user ? user.content : "", reply: reply.join(""), tools };
}

// A turn's article: built once, then filled as its reply streams in.
export class TurnView {
  constructor(userText) {
    this.text = "";
    this.root = element("article", "turn");
    const user = element("div", "msg user");
    user.append(element("div", "bubble", userText));
    const reply = element("div", "msg assistant");
    this.tools = element("div", "tools");
    this.body = element("div", "bubble markdown");
    this.foot = element("div", "turn-foot");
    reply.append(this.tools, this.body, this.foot);
    this.root.append(user, reply);
    this.pending = false;
  }

  static stored(turn) {
    const { user, reply, tools } = partsOf(turn);
    const view = new TurnView(user);
    view.seq = turn.seq;
    view.root.dataset.turnId = turn.id;
    for (const name of tools) view.tool(name);
    view.text = reply;
    view.paint();
    view.end(turn.state, turn.usage, turn.cost_usd, turn.error);
    if (!turn.in_view && (turn.state === "complete" || turn.state === "truncated")) {
      view.root.classList.add("out-of-view");
      view.root.title = "Older than what the model now sees verbatim";
    }
    return view;
  }

  streaming() {
    this.root.dataset.state = "streaming";
    this.body.classList.add("typing");
  }

  add(text) {
    this.text += text;
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.paint();
    });
  }

  paint() {
    this.body.replaceChildren(render(this.text));
  }

  tool(name) {
    this.tools.append(element("div", "tool-call", `used tool: ${name}`));
  }

  end(state, usage, cost, error) {
    this.paint();
    this.body.classList.remove("typing");
    this.root.dataset.state = state;
    this.foot.replaceChildren();
    const said = STATES[state];
    if (said) {
      const badge = element("span", "state " + state, said);
      if (error) badge.append(element("span", "why", " " + error));
      this.foot.append(badge);
    }
    if (usage && usage.input_tokens + usage.output_tokens > 0) {
      const meter = element("span", "usage", tokens(usage));
      const price = money(cost);
      if (price) meter.append(element("span", "turn-cost", " · " + price));
      this.foot.append(meter);
    }
  }

  fail(message) {
    this.end("failed", null, null, message);
  }

  // Buttons for what can be done with this turn; `last` adds regenerate and continue.
  actions(last, handlers) {
    for (const old of this.foot.querySelectorAll(".actions")) old.remove();
    const bar = element("span", "actions");
    if (this.text) {
      const copy = element("button", "link copy", "Copy");
      copy.type = "button";
      copy.addEventListener("click", () => handlers.copy(this.text, copy));
      bar.append(copy);
    }
    if (last) {
      if (this.root.dataset.state === "truncated") {
        const more = element("button", "link continue", "Continue");
        more.type = "button";
        more.addEventListener("click", handlers.continue);
        bar.append(more);
      }
      const again = element("button", "link regenerate", "Regenerate");
      again.type = "button";
      again.addEventListener("click", handlers.regenerate);
      bar.append(again);
    }
    this.foot.append(bar);
  }
}
