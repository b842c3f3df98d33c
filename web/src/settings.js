// The session's settings panel: title, system prompt, model, context policy; clear, delete.

const $ = (id) => document.getElementById(id);

// A destructive button asks "Click again" once on the page itself (a dialog box blocks the tab).
function armed(button, ask, label) {
  if (button.dataset.armed !== "1") {
    button.dataset.armed = "1";
    button.textContent = ask;
    return false;
  }
  button.dataset.armed = "";
  button.textContent = label;
  return true;
}

export class Settings {
  constructor(api, hooks) {
    this.api = api;
    this.hooks = hooks; // session() → the open one or null; saved(s); reset(); deleted(); failed(e)
    this.form = $("settings");
    $("toggle-settings").addEventListener("click", () => this.toggle(this.form.hidden));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.save();
    });
    $("reset-session").addEventListener("click", () => this.reset());
    $("delete-session").addEventListener("click", () => this.remove());
  }

  toggle(open) {
    this.form.hidden = !open;
    $("toggle-settings").setAttribute("aria-expanded", String(open));
  }

  show(session) {
    $("set-title").value = session?.title ?? "";
    $("set-system").value = session?.system_prompt ?? "";
    const model = session?.model ? [session.provider, session.model].filter(Boolean).join("/") : "";
    this.chooseModel(model);
    $("set-policy").value = session?.context?.policy ?? "";
    $("set-limit").value = session?.context?.limit ?? "";
    $("reset-session").disabled = !session;
    $("delete-session").disabled = !session;
  }

  chooseModel(model) {
    const select = $("set-model");
    if (model && ![...select.options].some((o) => o.value === model)) {
      select.append(new Option(model, model));
    }
    select.value = model;
  }

  async loadModels() {
    try {
      const models = await this.api.models();
      const select = $("set-model");
      const chosen = select.value;
      for (const id of models) {
        if (![...select.options].some((o) => o.value === id)) select.append(new Option(id, id));
      }
      select.value = chosen;
    } catch {
      // The model list is a convenience; the server's default model still works.
    }
  }

  // What the form says, as the body of a session's create or update.
  values() {
    const settings = {};
    const title = $("set-title").value.trim();
    if (title) settings.title = title;
    const system = $("set-system").value;
    if (system.trim()) settings.system_prompt = system;
    const model = $("set-model").value;
    if (model) settings.model = model;
    const policy = $("set-policy").value;
    if (policy) {
      settings.context = { policy };
      const limit = Number.parseInt($("set-limit").value, 10);
      if (limit > 0) settings.context.limit = limit;
    }
    return settings;
  }

  async save() {
    const shown = $("settings-error");
    shown.hidden = true;
    const session = this.hooks.session();
    if (!session) {
      this.toggle(false); // a new chat's settings apply when its first message creates it
      return;
    }
    // Emptied fields clear what was set.
    const settings = { title: "", system_prompt: "", ...this.values() };
    try {
      this.hooks.saved(await this.api.updateSession(session.id, settings));
      this.toggle(false);
    } catch (error) {
      shown.textContent = error.message;
      shown.hidden = false;
    }
  }

  async reset() {
    const session = this.hooks.session();
    if (!session || !armed($("reset-session"), "Click again to clear", "Clear conversation")) return;
    try {
      await this.api.resetSession(session.id);
      this.hooks.reset();
    } catch (error) {
      this.hooks.failed(error);
    }
  }

  async remove() {
    const session = this.hooks.session();
    if (!session || !armed($("delete-session"), "Click again to delete", "Delete session")) return;
    try {
      await this.api.deleteSession(session.id);
      this.toggle(false);
      this.hooks.deleted(session.id);
    } catch (error) {
      this.hooks.failed(error);
    }
  }
}
