// The worker's plain HTTP routes: auth state, login/logout, the tool list (docs/http.md).
// Requests go to the page's own origin. A login answers with a session secret and sets an HttpOnly cookie; both
// authenticate a request: the cookie (which the browser sends to every port of this host, so a server of another
// local user could read it) is worthless without the secret, which lives in this origin's sessionStorage only and
// travels as the X-Krait-Session header (and as a WebSocket subprotocol, socket.js). The token is sent once, in a
// POST body, and never in a URL the worker sees.

const SECRET = "krait-secret";

/** The session secret of the last login in this tab ("" when none). */
export const sessionSecret = () => sessionStorage.getItem(SECRET) || "";

/** An error the worker sent as {"error": {type, message, code, details?, traceback?}}, or a transport failure. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "UNKNOWN";
    this.type = error.type || "";
    this.details = error.details;
    this.traceback = error.traceback;
  }
}

async function request(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (sessionSecret()) init.headers["X-Krait-Session"] = sessionSecret();
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, { code: "UNAVAILABLE", message: `cannot reach the worker: ${err.message}` });
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let payload = null;
  try {
    payload = text ? JSON.parse(text) : null;
  } catch {
    payload = null;
  }
  if (!response.ok) {
    const error = payload && payload.error ? payload.error : { message: text.slice(0, 200) || response.statusText };
    throw new ApiError(response.status, error);
  }
  return payload;
}

/** {required, authenticated} */
export const authState = () => request("GET", "/v1/auth");
export async function login(token) {
  const answer = await request("POST", "/v1/login", { token });
  sessionStorage.setItem(SECRET, answer.session);
}
export async function logout() {
  try {
    await request("POST", "/v1/logout");
  } finally {
    sessionStorage.removeItem(SECRET);
  }
}
/** {worker_id, adapter, tools: [{name, description, streaming, parameters, result}]} */
export const listTools = () => request("GET", "/v1/tools");
