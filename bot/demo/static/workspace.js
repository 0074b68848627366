// The demo workspace: renders what the Slack stand-in holds for one person, and sends what they do
// to the workspace server, which turns it into exactly what Slack would send the bot.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 600;
const EMOJI = {
  white_check_mark: "✅", x: "❌", warning: "⚠️", lock: "🔒", key: "🔑", no_entry: "⛔",
  rotating_light: "🚨", large_green_circle: "🟢", hourglass_flowing_sand: "⏳",
  heavy_multiplication_x: "✖️", alarm_clock: "⏰", wave: "👋", tada: "🎉",
};

let directory = null;   // people, channels, bot, hints
let me = null;          // the person id we act as
let current = null;     // the conversation shown
let state = null;       // what the server says `me` sees
let shown = "";         // the rendered feed of `current`, to redraw only on change
let modalKey = "";      // the rendered modal, likewise
const seen = {};        // person -> channel -> number of items seen

async function call(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `the workspace answered ${response.status}`);
  return data;
}

// --- mrkdwn --------------------------------------------------------------------------------------

function escapeHtml(text) {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

function unescapeSlack(text) {
  // Slack's own escaping of the three characters it reserves.
  return text.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
}

function personName(id) {
  if (directory && id === directory.bot.id) return directory.bot.name;
  const person = directory && directory.people.find((p) => p.id === id);
  return person ? person.name : id;
}

function channelName(id) {
  const channel = directory && directory.channels.find((c) => c.id === id);
  return channel ? channel.name : id;
}

function inline(text) {
  // Formatting inside plain runs of text (already HTML-escaped).
  return text
    .replace(/`([^`\n]+)`/g, "<code>$1</code>")
    .replace(/(^|[\s(])\*([^*\n]+)\*(?=[\s).,!?:;]|$)/g, "$1<b>$2</b>")
    .replace(/(^|[\s(])_([^_\n]+)_(?=[\s).,!?:;]|$)/g, "$1<i>$2</i>")
    .replace(/(^|[\s(])~([^~\n]+)~(?=[\s).,!?:;]|$)/g, "$1<s>$2</s>")
    .replace(/:([a-z0-9_+-]+):/g, (whole, name) => EMOJI[name] || whole)
    // Slack links bare URLs too.
    .replace(/(^|\s)(https?:\/\/[^\s<]+[^\s<.,:;!?)])/g, (whole, lead, url) =>
      `${lead}<a href="${url}" target="_blank" rel="noopener noreferrer">${url}</a>`);
}

function slackDate(inner) {
  // <!date^EPOCH^FORMAT[^LINK]|FALLBACK>, shown in the reader's time zone as Slack does.
  const [spec] = inner.split("|", 1);
  const [, epoch, format] = spec.split("^");
  const date = new Date(Number(epoch) * 1000);
  if (isNaN(date.getTime())) return escapeHtml(inner.split("|")[1] || "");
  const pad = (n) => String(n).padStart(2, "0");
  const time = `${pad(date.getHours())}:${pad(date.getMinutes())}`;
  const today = new Date().toDateString() === date.toDateString();
  const words = {
    "{date_num}": `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`,
    "{date_short}": date.toLocaleDateString(undefined, { month: "short", day: "numeric", year: "numeric" }),
    "{date_short_pretty}": today ? "today" : date.toLocaleDateString(undefined, { month: "short", day: "numeric" }),
    "{date}": date.toLocaleDateString(undefined, { month: "long", day: "numeric", year: "numeric" }),
    "{date_pretty}": today ? "today" : date.toLocaleDateString(undefined, { month: "long", day: "numeric" }),
    "{date_long}": date.toLocaleDateString(undefined, { weekday: "long", month: "long", day: "numeric", year: "numeric" }),
    "{date_long_pretty}": today ? "today" : date.toLocaleDateString(undefined, { weekday: "long", month: "long", day: "numeric" }),
    "{time}": time,
    "{time_secs}": `${time}:${pad(date.getSeconds())}`,
  };
  const text = (format || "{date_num} {time}").replace(/\{[a-z_]+\}/g, (w) => words[w] || w);
  return `<time datetime="${date.toISOString()}">${escapeHtml(text)}</time>`;
}

function token(inner) {
  // One <…> token of Slack's message format: a mention, a channel, a date, a special mention or a link.
  if (inner.startsWith("!date^")) return slackDate(inner);
  const [target, label] = inner.split("|", 2);
  if (target.startsWith("@")) return `<span class="mention">@${escapeHtml(personName(target.slice(1)))}</span>`;
  if (target.startsWith("#")) return `<span class="mention">#${escapeHtml(label || channelName(target.slice(1)))}</span>`;
  if (target.startsWith("!subteam^")) return `<span class="mention">@${escapeHtml(label || target.slice(9))}</span>`;
  if (target.startsWith("!")) return `<span class="mention">@${escapeHtml(target.slice(1))}</span>`;
  const url = unescapeSlack(target);
  if (!/^https?:\/\//i.test(url)) return escapeHtml(unescapeSlack(label || target));
  return `<a href="${escapeHtml(url)}" target="_blank" rel="noopener noreferrer">${escapeHtml(unescapeSlack(label || target))}</a>`;
}

function mrkdwn(text) {
  const out = [];
  const blocks = String(text || "").split(/```/);
  blocks.forEach((part, index) => {
    if (index % 2 === 1) { out.push(`<pre>${escapeHtml(unescapeSlack(part))}</pre>`); return; }
    const lines = part.split("\n").map((line) => {
      const quoted = line.startsWith("&gt; ") || line.startsWith("> ");
      const body = quoted ? line.replace(/^(&gt;|>) /, "") : line;
      const html = body.split(/<([^<>]+)>/).map((piece, i) => (i % 2 ? token(piece) : inline(escapeHtml(unescapeSlack(piece))))).join("");
      return quoted ? `<blockquote>${html}</blockquote>` : html;
    });
    out.push(lines.join("<br>"));
  });
  return out.join("");
}

function textObject(obj) {
  if (!obj) return "";
  if (obj.type === "mrkdwn") return mrkdwn(obj.text);
  // plain_text, as Slack shows it: no bold, code, links or mentions; emoji codes unless emoji is false.
  let html = escapeHtml(unescapeSlack(obj.text || ""));
  if (obj.emoji !== false) html = html.replace(/:([a-z0-9_+-]+):/g, (whole, name) => EMOJI[name] || whole);
  return html.replace(/\n/g, "<br>");
}

// --- Block Kit -----------------------------------------------------------------------------------

function element(tag, className, html) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (html !== undefined) el.innerHTML = html;
  return el;
}

function button(spec, onPress) {
  const el = element("button", `bk ${spec.style || ""}`.trim(), escapeHtml((spec.text && spec.text.text) || "Button"));
  el.type = "button";
  el.dataset.actionId = spec.action_id || "";
  if (spec.url && /^https?:\/\//i.test(spec.url)) {
    el.addEventListener("click", () => window.open(spec.url, "_blank", "noopener"));
  } else if (onPress) {
    el.addEventListener("click", () => {
      if (spec.confirm && !window.confirm(spec.confirm.text ? spec.confirm.text.text : "Are you sure?")) return;
      onPress(spec);
    });
  } else {
    el.disabled = true;
  }
  return el;
}

function image(spec, small) {
  const img = document.createElement("img");
  if (/^https?:\/\//i.test(spec.image_url || "")) img.src = spec.image_url;
  img.alt = spec.alt_text || "";
  if (small) img.className = "small";
  return img;
}

// Renders message blocks; `press(blockId, spec)` is called for buttons (null: not pressable).
function renderBlocks(blocks, press) {
  const root = element("div", "blocks");
  blocks.forEach((block, index) => {
    const blockId = block.block_id || `b${index}`;
    const onPress = press ? (spec) => press(blockId, spec) : null;
    let el;
    switch (block.type) {
      case "header": el = element("div", "block header", textObject(block.text)); break;
      case "divider": el = element("hr", "block divider"); break;
      case "context":
        el = element("div", "block context");
        (block.elements || []).forEach((item) => el.appendChild(item.type === "image" ? image(item, true) : element("span", "", textObject(item))));
        break;
      case "image":
        el = element("div", "block image");
        if (block.title) el.appendChild(element("div", "", textObject(block.title)));
        el.appendChild(image(block));
        break;
      case "section": {
        el = element("div", "block section");
        const main = element("div", "section-text");
        if (block.text) main.appendChild(element("div", "", textObject(block.text)));
        if (block.fields) {
          const fields = element("div", "fields");
          block.fields.forEach((f) => fields.appendChild(element("div", "", textObject(f))));
          main.appendChild(fields);
        }
        el.appendChild(main);
        if (block.accessory) {
          const acc = element("div", "accessory");
          if (block.accessory.type === "image") acc.appendChild(image(block.accessory));
          else if (block.accessory.type === "button") acc.appendChild(button(block.accessory, onPress));
          el.appendChild(acc);
        }
        break;
      }
      case "actions":
        el = element("div", "block actions");
        (block.elements || []).forEach((item) => {
          if (item.type === "button") el.appendChild(button(item, onPress));
        });
        break;
      case "markdown": el = element("div", "block", mrkdwn(block.text)); break;
      default: el = element("div", "block", `<span class="only-you">[${escapeHtml(block.type)} block]</span>`);
    }
    el.dataset.blockId = blockId;
    root.appendChild(el);
  });
  return root;
}

// --- messages ------------------------------------------------------------------------------------

function renderItem(item, channel) {
  const row = element("div", "msg");
  row.dataset.ts = item.ts;
  if (item.ephemeral) row.classList.add("ephemeral");
  if (item.thread_ts && item.thread_ts !== item.ts) row.classList.add("reply");
  const mine = item.typed;
  const avatar = element("div", mine ? "avatar person" : "avatar", mine ? escapeHtml(personName(me)[0]) : "J");
  row.appendChild(avatar);
  const content = element("div", "content");
  const head = element("div", "head");
  head.innerHTML = mine
    ? `<span class="who">${escapeHtml(personName(me))}</span>`
    : `<span class="who">jit-bot</span><span class="app-tag">APP</span>`;
  if (item.ephemeral && !mine) head.innerHTML += ` <span class="only-you">Only visible to you</span>`;
  content.appendChild(head);
  const body = element("div", "body");
  if (mine) {
    body.appendChild(element("div", "typed", escapeHtml(item.text || "")));
  } else if (item.blocks && item.blocks.length) {
    const press = item.ephemeral ? null : (blockId, spec) => pressButton(channel, item.ts, blockId, spec);
    body.appendChild(renderBlocks(item.blocks, press));
  } else {
    body.appendChild(element("div", "", mrkdwn(item.text)));
  }
  if (item.edited) body.appendChild(element("span", "edited", "(edited)"));
  content.appendChild(body);
  row.appendChild(content);
  return row;
}

function orderWithThreads(items) {
  // Replies follow their parent, as in a thread expanded inline.
  const parents = items.filter((i) => !i.thread_ts || i.thread_ts === i.ts);
  const out = [];
  parents.forEach((p) => {
    out.push(p);
    items.filter((i) => i.thread_ts === p.ts && i.ts !== p.ts).forEach((r) => out.push(r));
  });
  items.filter((i) => i.thread_ts && i.thread_ts !== i.ts && !parents.some((p) => p.ts === i.thread_ts)).forEach((r) => out.push(r));
  return out;
}

function renderFeed() {
  const items = (state && state.feed[current]) || [];
  const snapshot = JSON.stringify([me, current, items]);
  if (snapshot === shown) return;
  shown = snapshot;
  const box = $("messages");
  box.replaceChildren(...orderWithThreads(items).map((item) => renderItem(item, current)));
  if (!items.length) box.appendChild(element("div", "msg empty", `<div></div><div class="only-you">Nothing here yet.</div>`));
  box.scrollTop = box.scrollHeight;  // the newest message, as Slack shows a conversation
  seen[me] = seen[me] || {};
  seen[me][current] = items.length;
}

function conversations() {
  const channels = directory.channels.map((c) => ({ id: c.id, label: `# ${c.name}`, about: c.about }));
  const dm = { id: state ? state.dm : "D" + me.slice(1), label: "jit-bot", about: "Your direct messages with the bot" };
  return { channels, dms: [dm] };
}

let sidebarShown = "";
function renderSidebar() {
  const { channels, dms } = conversations();
  const all = [...channels, ...dms];
  const unread = (c) => c.id !== current && (state ? (state.feed[c.id] || []).length : 0) > ((seen[me] || {})[c.id] || 0);
  // Rebuilt only when something in it changed: a button replaced between mouse-down and mouse-up
  // swallows the click.
  const snapshot = JSON.stringify([me, current, all.map((c) => [c.id, c.label, unread(c)])]);
  if (snapshot === sidebarShown) return;
  sidebarShown = snapshot;
  const mark = (list, target) => {
    target.replaceChildren(...list.map((c) => {
      const li = document.createElement("li");
      const b = element("button", "", escapeHtml(c.label));
      b.type = "button";
      b.dataset.channel = c.id;
      b.setAttribute("aria-current", String(c.id === current));
      if (unread(c)) b.classList.add("unread");
      b.addEventListener("click", () => { current = c.id; render(); });
      li.appendChild(b);
      return li;
    }));
  };
  mark(channels, $("channels"));
  mark(dms, $("dms"));
  const here = all.find((c) => c.id === current) || all[0];
  $("channel-name").textContent = here.label;
  $("channel-about").textContent = here.about || "";
  const person = directory.people.find((p) => p.id === me);
  $("role").textContent = person ? `${person.role}` : "";
}

// --- modals --------------------------------------------------------------------------------------

function optionOf(opt) {
  return { text: { type: "plain_text", text: opt.text.text, emoji: true }, value: opt.value };
}

function allOptions(spec) {
  return spec.options || (spec.option_groups || []).flatMap((g) => g.options);
}

// The state values of the open modal, as Slack collects them: block id -> action id -> value.
function collectValues() {
  const values = {};
  document.querySelectorAll("#modal-blocks [data-input]").forEach((field) => {
    const { blockId, actionId, kind } = field.dataset;
    const spec = JSON.parse(field.dataset.spec);
    let value;
    if (kind === "plain_text_input") {
      value = { type: kind, value: field.querySelector("input,textarea").value };
    } else if (kind === "static_select") {
      const chosen = field.querySelector("select").value;
      const opt = allOptions(spec).find((o) => o.value === chosen);
      value = { type: kind, selected_option: opt ? optionOf(opt) : null };
    } else if (kind === "radio_buttons") {
      const chosen = field.querySelector("input:checked");
      const opt = chosen && allOptions(spec).find((o) => o.value === chosen.value);
      value = { type: kind, selected_option: opt ? optionOf(opt) : null };
    } else {
      const chosen = [...field.querySelectorAll("input:checked")].map((i) => i.value);
      value = { type: kind, selected_options: allOptions(spec).filter((o) => chosen.includes(o.value)).map(optionOf) };
    }
    values[blockId] = values[blockId] || {};
    values[blockId][actionId] = value;
  });
  return values;
}

function isEmpty(value) {
  if (!value) return true;
  if ("value" in value) return !value.value;  // spaces count as an answer; the app judges those
  if ("selected_option" in value) return !value.selected_option;
  if ("selected_options" in value) return !value.selected_options.length;
  return true;
}

function inputBlock(block, index, view, previous) {
  const blockId = block.block_id || `b${index}`;
  const spec = block.element;
  const kind = spec.type;
  const wrap = element("div", "input");
  wrap.dataset.blockId = blockId;
  const fieldId = `f-${index}`;
  const label = element("label", "label", textObject(block.label) + (block.optional ? ' <span class="optional">(optional)</span>' : ""));
  label.htmlFor = fieldId;
  wrap.appendChild(label);
  const field = element("div", "field");
  Object.assign(field.dataset, { input: "1", blockId, actionId: spec.action_id, kind, spec: JSON.stringify(spec) });
  const old = previous[blockId] && previous[blockId][spec.action_id];
  if (kind === "plain_text_input") {
    const input = document.createElement(spec.multiline ? "textarea" : "input");
    if (!spec.multiline) input.type = "text";
    input.id = fieldId;
    input.value = old ? old.value || "" : spec.initial_value || "";
    if (spec.placeholder) input.placeholder = spec.placeholder.text;
    if (spec.max_length) input.maxLength = spec.max_length;
    field.appendChild(input);
  } else if (kind === "static_select") {
    const select = document.createElement("select");
    select.id = fieldId;
    select.appendChild(new Option(spec.placeholder ? spec.placeholder.text : "Choose…", ""));
    allOptions(spec).forEach((o) => select.appendChild(new Option(o.text.text, o.value)));
    const initial = old && old.selected_option ? old.selected_option.value : spec.initial_option ? spec.initial_option.value : "";
    select.value = initial;
    if (block.dispatch_action) {
      select.addEventListener("change", () => {
        const opt = allOptions(spec).find((o) => o.value === select.value);
        dispatchAction(view, { type: kind, action_id: spec.action_id, block_id: blockId, selected_option: opt ? optionOf(opt) : null, action_ts: String(Date.now() / 1000) });
      });
    }
    field.appendChild(select);
  } else if (["multi_static_select", "checkboxes", "radio_buttons"].includes(kind)) {
    const choices = element("div", "choices");
    choices.id = fieldId;
    const picked = old ? (old.selected_options || (old.selected_option ? [old.selected_option] : [])).map((o) => o.value)
      : (spec.initial_options || (spec.initial_option ? [spec.initial_option] : [])).map((o) => o.value);
    allOptions(spec).forEach((o) => {
      const l = document.createElement("label");
      const box = document.createElement("input");
      box.type = kind === "radio_buttons" ? "radio" : "checkbox";
      box.name = fieldId;
      box.value = o.value;
      box.checked = picked.includes(o.value);
      l.appendChild(box);
      l.appendChild(document.createTextNode(o.text.text));
      choices.appendChild(l);
    });
    field.appendChild(choices);
  } else {
    field.appendChild(element("div", "only-you", `[${escapeHtml(kind)} input]`));
  }
  wrap.appendChild(field);
  if (block.hint) wrap.appendChild(element("div", "hint", textObject(block.hint)));
  const error = view.errors && view.errors[blockId];
  if (error) {
    wrap.classList.add("has-error");
    wrap.appendChild(element("div", "error", escapeHtml(error)));
  }
  return wrap;
}

function renderModal() {
  const view = state && state.view;
  const key = view ? JSON.stringify([view.id, view.hash, view.errors, view.blocks]) : "";
  if (key === modalKey) return;
  const previous = view && modalKey && JSON.parse(modalKey)[0] === view.id ? collectValues() : {};
  modalKey = key;
  $("modal-backdrop").hidden = !view;
  if (!view) return;
  $("modal-title").textContent = view.title.text;
  $("modal-submit").textContent = view.submit ? view.submit.text : "Submit";
  $("modal-submit").hidden = !view.submit;
  $("modal-close").textContent = view.close ? view.close.text : "Cancel";
  $("modal-error").textContent = "";
  const blocks = $("modal-blocks");
  blocks.replaceChildren();
  view.blocks.forEach((block, index) => {
    blocks.appendChild(block.type === "input" ? inputBlock(block, index, view, previous) : renderBlocks([block], null));
  });
}

async function dispatchAction(view, action) {
  try {
    await call("POST", "/workspace/view/action", { person: me, view_id: view.id, values: collectValues(), action });
  } catch (error) {
    $("modal-error").textContent = error.message;
  }
  poll();
}

async function submitModal(event) {
  event.preventDefault();
  const view = state && state.view;
  if (!view) return;
  const values = collectValues();
  // Slack itself refuses to send a form with a required field left empty.
  let missing = false;
  document.querySelectorAll("#modal-blocks .input").forEach((wrap) => {
    const block = view.blocks.find((b, i) => (b.block_id || `b${i}`) === wrap.dataset.blockId);
    const actionId = block && block.element.action_id;
    if (block && !block.optional && isEmpty((values[wrap.dataset.blockId] || {})[actionId])) {
      missing = true;
      wrap.classList.add("has-error");
      if (!wrap.querySelector(".error")) wrap.appendChild(element("div", "error", "Please complete this required field."));
    }
  });
  if (missing) return;
  try {
    const result = await call("POST", "/workspace/view/submit", { person: me, view_id: view.id, values });
    if (!result.ok) $("modal-error").textContent = result.error;
  } catch (error) {
    $("modal-error").textContent = error.message;
  }
  poll();
}

async function closeModal() {
  const view = state && state.view;
  if (!view) return;
  try { await call("POST", "/workspace/view/close", { person: me, view_id: view.id }); } catch (_) { /* closes anyway */ }
  poll();
}

// --- actions -------------------------------------------------------------------------------------

async function pressButton(channel, ts, blockId, spec) {
  $("composer-error").textContent = "";
  try {
    await call("POST", "/workspace/press", { person: me, channel, ts, block_id: blockId, action_id: spec.action_id });
  } catch (error) {
    $("composer-error").textContent = error.message;
  }
  poll();
}

async function send(event) {
  event.preventDefault();
  const input = $("composer-input");
  const text = input.value.trim();
  if (!text) return;
  $("composer-error").textContent = "";
  try {
    await call("POST", "/workspace/command", { person: me, channel: current, text });
    input.value = "";
  } catch (error) {
    $("composer-error").textContent = error.message;
  }
  poll();
}

// --- the loop ------------------------------------------------------------------------------------

function render() {
  renderSidebar();
  renderFeed();
  renderModal();
}

let polling = false;
async function poll() {
  if (polling) return;
  polling = true;
  try {
    state = await call("GET", `/workspace/state?person=${encodeURIComponent(me)}`);
    render();
    document.body.dataset.ready = "1";
  } catch (error) {
    $("composer-error").textContent = `the workspace is not answering (${error.message}); is jit-bot demo still running?`;
  } finally {
    polling = false;
  }
}

function choose(person) {
  me = person;
  localStorage.setItem("jit-demo-person", me);
  current = "D" + me.slice(1);
  shown = "";
  modalKey = "";
  state = null;
  $("person").value = me;
  poll();
}

async function start() {
  directory = await call("GET", "/workspace/people");
  const select = $("person");
  directory.people.forEach((p) => select.appendChild(new Option(p.name, p.id)));
  select.addEventListener("change", () => choose(select.value));
  $("hint-list").replaceChildren(...directory.hints.map((h) => element("li", "", escapeHtml(h))));
  $("composer").addEventListener("submit", send);
  $("modal-form").addEventListener("submit", submitModal);
  $("modal-close").addEventListener("click", closeModal);
  $("modal-x").addEventListener("click", closeModal);
  const saved = localStorage.getItem("jit-demo-person");
  choose(directory.people.some((p) => p.id === saved) ? saved : directory.people[0].id);
  setInterval(poll, POLL_MS);
}

start();
