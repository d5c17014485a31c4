// Checkpoint verification in the browser: C2SP signed note (Ed25519, key type 0x01)
// and tlog-cosignature/v1 (Ed25519, key type 0x04), with WebCrypto. The same rules as
// vault_service/audit/note.py and witness.py, so that an auditor need not trust the
// service's own answer about its log.

const SIG_PREFIX = "\u2014 ";
const NOTE_KEY = 0x01;
const COSIGNATURE_KEY = 0x04;
const enc = new TextEncoder();

function b64(text) {
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function keyId(name, type, pub) {
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", concat(enc.encode(name), new Uint8Array([0x0a, type]), pub)),
  );
  return hex(digest.slice(0, 4));
}

// "name+hex8+base64(type || public key)": checked against its own id, else refused.
export async function parseKey(text) {
  // The name holds no "+"; the base64 may.
  const line = text.trim();
  const plus = line.indexOf("+");
  const name = line.slice(0, plus);
  const id = line.slice(plus + 1, plus + 9);
  if (plus < 1 || line[plus + 9] !== "+" || !/^[0-9a-f]{8}$/.test(id)) throw new Error("malformed_key");
  const raw = b64(line.slice(plus + 10));
  if (raw.length !== 33 || (raw[0] !== NOTE_KEY && raw[0] !== COSIGNATURE_KEY)) {
    throw new Error("malformed_key");
  }
  const pub = raw.slice(1);
  if ((await keyId(name, raw[0], pub)) !== id) throw new Error("key_id_mismatch");
  const key = await crypto.subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
  return { name, id, type: raw[0], key };
}

export function parseNote(text) {
  const split = text.indexOf("\n\n");
  if (split < 0) throw new Error("malformed_note");
  const body = text.slice(0, split + 1);
  const lines = body.split("\n");
  const signatures = text
    .slice(split + 2)
    .split("\n")
    .filter((l) => l.length > 0)
    .map((line) => {
      if (!line.startsWith(SIG_PREFIX)) throw new Error("malformed_signature");
      const rest = line.slice(SIG_PREFIX.length);
      const space = rest.lastIndexOf(" ");
      return { name: rest.slice(0, space), blob: b64(rest.slice(space + 1)) };
    });
  return { body, origin: lines[0], size: lines[1], root: lines[2], signatures };
}

// Every signature line with its result: "ok", "bad" or "unknown" (no pinned key with
// that name and id). The note is verified when a published log key signed it.
export async function verifyNote(text, logKeys, witnessKeys) {
  const note = parseNote(text);
  const keys = [...logKeys, ...witnessKeys];
  const results = [];
  for (const sig of note.signatures) {
    const id = hex(sig.blob.slice(0, 4));
    const key = keys.find((k) => k.name === sig.name && k.id === id);
    let result = "unknown";
    let kind = "unknown";
    if (key && key.type === NOTE_KEY && sig.blob.length === 68) {
      kind = "log";
      const ok = await crypto.subtle.verify("Ed25519", key.key, sig.blob.slice(4), enc.encode(note.body));
      result = ok ? "ok" : "bad";
    } else if (key && key.type === COSIGNATURE_KEY && sig.blob.length === 76) {
      kind = "witness";
      const view = new DataView(sig.blob.buffer, sig.blob.byteOffset + 4, 8);
      const time = view.getBigUint64(0).toString();
      const message = enc.encode(`cosignature/v1\ntime ${time}\n${note.body}`);
      const ok = await crypto.subtle.verify("Ed25519", key.key, sig.blob.slice(12), message);
      result = ok ? "ok" : "bad";
    } else if (key) {
      result = "bad";
    } else if (sig.blob.length === 76) {
      kind = "witness";
    }
    results.push({ name: sig.name, id, kind, result });
  }
  const logOk = results.some((r) => r.kind === "log" && r.result === "ok");
  const anyBad = results.some((r) => r.result === "bad");
  return { note, results, verified: logOk && !anyBad };
}
