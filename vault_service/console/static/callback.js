// The provider's redirect lands here, in the pop-up: hand the code and state to the
// console page that asked (same origin, BroadcastChannel), take them out of the
// address bar and history, and close.
const params = new URLSearchParams(location.search);
const message = { state: params.get("state"), code: params.get("code"), error: params.get("error") };
history.replaceState(null, "", location.pathname);
const channel = new BroadcastChannel("vault-service-console-oidc");
channel.postMessage(message);
channel.close();
window.close();
