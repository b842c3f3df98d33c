// The chat page: sign-in, the sidebar, the conversation, the composer.
import { Api, ApiError } from "./api.js";
import { Settings } from "./settings.js";
import { Sidebar, titleOf } from "./sidebar.js";
import { TurnView, element, money } from "./turns.js";

const $ = (id) => document.getElementById(id);

// A time of day, with the day too when it is not today (a daily quota resets at midnight UTC).
function clock(at) {
  const time = { hour: "2-digit", minute: "2-digit", second: "2-digit" };
  if (at.toDateString() === new Date().toDateString()) return at.toLocaleTimeString([], time);
  return at.toLocaleString([], { weekday: "short", ...time });
}

function duration(seconds) {
  if (seconds < 90) return `${seconds} s`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 90) return `${minutes} min`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

class Page {
  constructor() {
    this.api = new Api();
    this.session = null; // the open session (SessionOut), or null for a new chat
    this.views = []; // TurnView per turn, oldest first
    this.live = null; // { controller, view } while a reply streams
    this.sidebar = new Sidebar(this.api, {
      open: (id) => this.open(id, true),
      renamed: (s) => {
        if (this.session?.id === s.id) this.showSession(s);
      },
      removed: (id) => {
        if (this.session?.id === id) this.newChat(true);
      },
      reset: (id) => {
        if (this.session?.id === id) this.open(id, false);
      },
      failed: (error) => this.notify(error),
    });
    this.settings = new Settings(this.api, {
      session: () => (this.live ? null : this.session),
      saved: (s) => {
        this.session = s;
        this.showSession(s);
        this.sidebar.touch(s);
      },
      reset: () => this.open(this.session.id, false),
      deleted: (id) => {
        this.sidebar.find(id)?.remove();
        this.newChat(true);
      },
      failed: (error) => this.notify(error),
    });
  }

  async start() {
    if (!this.wired) this.wire();
    this.wired = true;
    const id = new URLSearchParams(location.search).get("session");
    try {
      await this.sidebar.load();
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        const refused = Boolean(this.api.key);
        this.api.signOut();
        this.signInForm(refused ? "That key was refused." : null);
        return;
      }
      this.enter();
      this.notify(error);
      return;
    }
    this.enter();
    this.settings.loadModels();
    if (id) await this.open(id, false);
    else this.newChat(false);
  }

  enter() {
    $("signin").hidden = true;
    $("app").hidden = false;
    $("sign-out").hidden = !this.api.key;
    $("input").focus();
  }

  signInForm(error) {
    $("app").hidden = true;
    $("signin").hidden = false;
    const shown = $("signin-error");
    shown.hidden = !error;
    shown.textContent = error ?? "";
    $("signin-key").focus();
  }

  wire() {
    $("signin-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const key = $("signin-key").value.trim();
      if (!key) return;
      this.api.signIn(key);
      $("signin-key").value = "";
      await this.start();
    });
    $("sign-out").addEventListener("click", () => {
      this.api.signOut();
      location.replace(location.pathname);
    });
    $("new-chat").addEventListener("click", () => this.newChat(true));
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    const input = $("input");
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send();
      } else if (event.key === "Escape" && this.live) {
        this.stop();
      }
    });
    input.addEventListener("input", () => this.fit());
    $("stop").addEventListener("click", () => this.stop());
    $("toggle-sidebar").addEventListener("click", () => this.drawer(!document.body.classList.contains("drawer")));
    $("scrim").addEventListener("click", () => this.drawer(false));
    window.addEventListener("popstate", () => {
      const id = new URLSearchParams(location.search).get("session");
      if (id) this.open(id, false);
      else this.newChat(false);
    });
  }

  drawer(open) {
    document.body.classList.toggle("drawer", open);
    $("scrim").hidden = !open;
  }

  fit() {
    const input = $("input");
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 240) + "px";
  }

  url(id, push) {
    const target = id ? "?session=" + encodeURIComponent(id) : location.pathname;
    if (push) history.pushState(null, "", target);
    else history.replaceState(null, "", target);
  }

  // Stop reading the reply in flight (to look at another session): it still finishes and is
  // stored, since a reader leaving does not stop a turn; the stop button does.
  detach() {
    if (!this.live) return;
    this.live.controller.abort();
    this.live = null;
    this.busy(false);
  }

  newChat(push) {
    this.detach();
    this.session = null;
    this.views = [];
    this.url(null, push);
    this.sidebar.mark(null);
    this.showSession(null);
    this.paint();
    this.drawer(false);
    $("input").focus();
  }

  async open(id, push) {
    this.detach();
    this.clearNotice();
    try {
      const [session, turns] = await Promise.all([this.api.session(id), this.api.turns(id)]);
      this.session = session;
      this.views = turns.map((t) => TurnView.stored(t));
    } catch (error) {
      this.notify(error.status === 404 ? new Error("No such session: " + id) : error);
      this.newChat(false);
      return;
    }
    this.url(id, push);
    this.sidebar.mark(id);
    this.showSession(this.session);
    this.paint();
    this.drawer(false);
    $("input").focus();
  }

  showSession(session) {
    $("session-title").textContent = session ? titleOf(session) : "New chat";
    document.title = session ? `${titleOf(session)} · chatd` : "chatd";
    $("session-cost").textContent = session ? money(session.cost_usd) : "";
    this.settings.show(session);
  }

  // Draw the conversation from the turn views; regenerate and continue go on the last.
  paint() {
    const box = $("conversation");
    box.replaceChildren();
    if (!this.views.length) {
      box.append($("empty") ?? this.emptyState());
      $("empty").hidden = false;
    }
    this.views.forEach((view, i) => {
      view.actions(i === this.views.length - 1 && !this.live, this.handlers());
      box.append(view.root);
    });
    this.scroll();
  }

  emptyState() {
    const empty = element("div", "empty");
    empty.id = "empty";
    empty.append(element("h1", "", "What can I help with?"));
    empty.append(element("p", "", "Enter sends, Shift+Enter starts a new line."));
    return empty;
  }

  handlers() {
    return {
      copy: (text, button) => this.copy(text, button),
      regenerate: () => this.run("regenerate", {}, null),
      continue: () => this.run("continue", {}, this.views.at(-1)),
    };
  }

  scroll() {
    const box = $("conversation");
    box.scrollTop = box.scrollHeight;
  }

  async copy(text, button) {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const area = element("textarea");
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  }

  async send() {
    const input = $("input");
    const text = input.value;
    if (!text.trim() || this.live) return;
    this.clearNotice();
    if (!this.session) {
      try {
        this.session = await this.api.createSession(this.settings.values());
      } catch (error) {
        this.notify(error);
        return;
      }
      this.url(this.session.id, true);
      this.sidebar.touch(this.session);
      this.sidebar.mark(this.session.id);
      this.showSession(this.session);
    }
    if (!this.session.title && !this.views.length) {
      // What the server will name it from this message, shown while the reply comes.
      const line = text.split("\n").find((l) => l.trim()) ?? "";
      const named = { ...this.session, title: line.trim().replace(/\s+/g, " ").slice(0, 80) };
      this.showSession(named);
      this.sidebar.touch(named);
    }
    input.value = "";
    this.fit();
    const ok = await this.run("messages", { content: text }, null, text);
    if (!ok) {
      // Refused before anything was stored: the message is still the user's to send.
      input.value = text;
      this.fit();
    }
  }

  // Stream a send, regenerate or continue; `onto` is the turn a continuation adds to.
  async run(action, body, onto, userText) {
    if (this.live || !this.session) return false;
    const id = this.session.id;
    let view = onto;
    if (!view) {
      if (action === "regenerate") {
        const last = this.views.pop();
        view = new TurnView(last.root.querySelector(".msg.user .bubble").textContent);
      } else {
        view = new TurnView(userText);
      }
      this.views.push(view);
    }
    $("empty")?.remove();
    view.streaming();
    const controller = new AbortController();
    this.live = { controller, view };
    this.busy(true);
    this.paint();
    let started = false;
    let ended = false;
    let moved = false;
    try {
      await this.api.stream(
        id,
        action,
        body,
        (name, data) => {
          if (name === "message_start") {
            started = true;
            view.root.dataset.turnId = data.turn_id;
          } else if (name === "delta") {
            view.add(data.text);
            this.scroll();
          } else if (name === "tool_call") {
            view.tool(data.name);
          } else if (name === "context") {
            moved = true;
            this.contextNote(data);
          } else if (name === "message_end") {
            ended = true;
            view.end(data.state, data.usage, data.cost_usd, null);
          } else if (name === "error") {
            ended = true;
            view.fail(data.message);
            // A stop the user asked for is no error to report: the turn shows it was stopped.
            if (data.type !== "turn_stopped_on_request") {
              this.notify(new ApiError(0, data.type, data.message, data.retry_after ?? null));
            }
          }
        },
        controller.signal,
      );
      if (!ended) view.fail("the connection closed before the reply ended");
    } catch (error) {
      if (this.live?.controller !== controller) return false; // the reader moved on
      if (!started) {
        // Refused: nothing was stored, so the page shows what is stored, as it was.
        this.live = null;
        this.busy(false);
        await this.refresh(id);
        this.notify(error);
        return false;
      }
      view.fail(error.name === "AbortError" ? "stopped" : error.message);
    }
    if (this.live?.controller !== controller) return true;
    this.live = null;
    this.busy(false);
    // Only this turn changed, unless the context moved (older turns left the model's view).
    const kept = moved ? [] : this.views.slice(0, -1);
    await this.refresh(id, kept);
    return true;
  }

  // Read back what the server stored after the `kept` turns: final states, costs, the title.
  async refresh(id, kept = []) {
    const after = kept.at(-1)?.seq ?? 0;
    try {
      const [session, turns] = await Promise.all([this.api.session(id), this.api.turns(id, after)]);
      if (this.session?.id !== id) return;
      this.session = session;
      this.views = [...kept, ...turns.map((t) => TurnView.stored(t))];
      this.showSession(session);
      this.sidebar.touch(session);
    } catch (error) {
      this.notify(error);
    }
    this.paint();
  }

  contextNote(data) {
    const what = data.summarized
      ? `${data.dropped_messages} earlier messages were summarised to fit the model's context.`
      : `${data.dropped_messages} earlier messages no longer fit the model's context and were left out.`;
    this.notify({ message: what, kind: "info" });
  }

  async stop() {
    const live = this.live;
    if (!live || !this.session) return;
    $("stop").disabled = true;
    try {
      await this.api.stop(this.session.id);
    } catch (error) {
      // Nothing in flight any more (it just ended), or the server is gone: stop reading.
      if (!(error instanceof ApiError && error.status === 409)) live.controller.abort();
    }
  }

  busy(on) {
    $("send").hidden = on;
    $("stop").hidden = !on;
    $("stop").disabled = false;
  }

  clearNotice() {
    $("notice").hidden = true;
    $("notice").replaceChildren();
  }

  notify(error) {
    const box = $("notice");
    box.replaceChildren();
    box.dataset.kind =
      error.kind ?? (error.status === 429 || error.type === "rate_limited" ? "rate-limit" : "error");
    if (error instanceof ApiError && error.status === 401) {
      this.signInForm("That key was refused.");
      return;
    }
    let text = error.message || String(error);
    if (error.retryAfter !== null && error.retryAfter !== undefined) {
      const at = new Date(Date.now() + error.retryAfter * 1000);
      const lead = box.dataset.kind === "rate-limit" ? "Rate limit reached." : "Try again later.";
      text = `${lead} You can send again at ${clock(at)} (in ${duration(error.retryAfter)}). ${text}`;
      box.dataset.resetAt = at.toISOString();
    }
    box.append(element("span", "", text));
    const close = element("button", "icon", "×");
    close.type = "button";
    close.setAttribute("aria-label", "Dismiss");
    close.addEventListener("click", () => this.clearNotice());
    box.append(close);
    box.hidden = false;
  }
}

new Page().start();
