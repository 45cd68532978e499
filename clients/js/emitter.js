// Listener bookkeeping shared by the SDK's clients (TurnstileClient and the
// tab-sharing TabClient), so both deliver events the same way.

/** on/off/emit with one rule: a listener that throws never breaks the client. */
export class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  /** Adds a listener; returns a function that removes it. */
  on(event, fn) {
    if (typeof fn !== "function") throw new TypeError("turnstile: listener must be a function");
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  /** Removes a listener added with {@link on}. */
  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  /** Calls every listener of `event` with `args`; a listener's error goes to `onListenerError`. */
  _emit(event, ...args) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (e) {
        // A listener's bug must not break the connection's state machine.
        (this._opts?.onListenerError ?? ((err) => console.error("turnstile: listener of", event, "threw", err)))(e);
      }
    }
  }
}
