// The sidebar: the caller's sessions, newest activity first, a page at a time.
import { element } from "./turns.js";

export function titleOf(session) {
  return session.title || session.id;
}

export class Sidebar {
  constructor(api, hooks) {
    this.api = api;
    this.hooks = hooks; // open(id), renamed(session), removed(id), reset(id), failed(error)
    this.list = document.getElementById("sessions");
    this.more = document.getElementById("more-sessions");
    this.cursor = null;
    this.current = null;
    this.more.addEventListener("click", () => this.load(false));
  }

  async load(fresh = true) {
    if (fresh) this.cursor = null;
    const page = await this.api.sessions(this.cursor);
    if (fresh) this.list.replaceChildren();
    for (const session of page.data) this.list.append(this.item(session));
    this.cursor = page.next_cursor;
    this.more.hidden = !this.cursor;
    this.mark(this.current);
  }

  mark(id) {
    this.current = id;
    for (const li of this.list.children) {
      const on = li.dataset.id === id;
      li.classList.toggle("current", on);
      li.querySelector(".session-link").setAttribute("aria-current", on ? "page" : "false");
    }
  }

  find(id) {
    return [...this.list.children].find((li) => li.dataset.id === id) ?? null;
  }

  // Put a session at the top (it just had a turn, or is new), with its latest title.
  touch(session) {
    const old = this.find(session.id);
    const li = this.item(session);
    if (old) old.remove();
    this.list.prepend(li);
    this.mark(this.current);
  }

  item(session) {
    const li = element("li", "session");
    li.dataset.id = session.id;
    const link = element("button", "session-link", titleOf(session));
    link.type = "button";
    link.title = titleOf(session);
    link.addEventListener("click", () => this.hooks.open(session.id));
    const menu = element("button", "icon session-menu", "⋯");
    menu.type = "button";
    menu.setAttribute("aria-label", `Actions for ${titleOf(session)}`);
    menu.addEventListener("click", () => this.actions(li, session));
    li.append(link, menu);
    return li;
  }

  actions(li, session) {
    const open = li.querySelector(".session-actions");
    if (open) {
      open.remove();
      return;
    }
    const bar = element("div", "session-actions");
    const button = (label, className, run) => {
      const b = element("button", className, label);
      b.type = "button";
      b.addEventListener("click", run);
      bar.append(b);
      return b;
    };
    button("Rename", "link rename", () => this.rename(li, session));
    button("Clear", "link reset", () =>
      this.confirm(bar, "Clear this conversation?", "Clear", async () => {
        await this.api.resetSession(session.id);
        this.hooks.reset(session.id);
      }),
    );
    button("Delete", "link delete", () =>
      this.confirm(bar, "Delete this session?", "Delete", async () => {
        await this.api.deleteSession(session.id);
        li.remove();
        this.hooks.removed(session.id);
      }),
    );
    li.append(bar);
  }

  // Ask on the page rather than with confirm(): a dialog box blocks the whole tab.
  confirm(bar, question, label, run) {
    bar.replaceChildren(element("span", "ask", question));
    const yes = element("button", "danger confirm", label);
    yes.type = "button";
    const no = element("button", "link", "Cancel");
    no.type = "button";
    yes.addEventListener("click", async () => {
      try {
        await run();
        bar.remove();
      } catch (error) {
        this.hooks.failed(error);
      }
    });
    no.addEventListener("click", () => bar.remove());
    bar.append(yes, no);
    yes.focus();
  }

  rename(li, session) {
    li.querySelector(".session-actions")?.remove();
    const link = li.querySelector(".session-link");
    const input = element("input", "rename-input");
    input.value = session.title ?? "";
    input.maxLength = 200;
    input.setAttribute("aria-label", "New title");
    link.replaceWith(input);
    input.focus();
    input.select();
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      if (save && input.value.trim() !== (session.title ?? "")) {
        try {
          const updated = await this.api.updateSession(session.id, { title: input.value.trim() });
          input.replaceWith(this.item(updated).querySelector(".session-link"));
          Object.assign(session, updated);
          this.hooks.renamed(updated);
          return;
        } catch (error) {
          this.hooks.failed(error);
        }
      }
      input.replaceWith(link);
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
  }
}
