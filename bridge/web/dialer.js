/* bridge dialer: sign in as an app user, call desk phones or app users, take incoming calls.
 * Uses only the PlanetKit browser SDK served at /sdk/planetkit.js. */
(function () {
  'use strict';

  const $ = function (id) { return document.getElementById(id); };
  const el = {
    presence: $('presence'), signin: $('signin'), signinForm: $('signin-form'), user: $('user'),
    service: $('service'), token: $('token'), devToken: $('dev-token'), signinError: $('signin-error'),
    session: $('session'), me: $('me'), signOut: $('sign-out'), dialForm: $('dial-form'), callee: $('callee'),
    call: $('call'), incoming: $('incoming'), incomingFrom: $('incoming-from'), accept: $('accept'),
    decline: $('decline'), state: $('state'), peer: $('peer'), timer: $('timer'), reason: $('reason'),
    hangup: $('hangup'), mute: $('mute'), hold: $('hold'), holdState: $('hold-state'), keypad: $('keypad'),
    dtmfSent: $('dtmf-sent'),
    dtmfReceived: $('dtmf-received'), log: $('log'), audio: $('peer-audio'),
  };

  const app = {
    devTokens: false,
    me: null,            // {user, service, token, dev}
    listener: null,
    call: null,          // the current PlanetKit.Call
    incoming: null,      // the push being offered
    connectedAt: 0,
    tick: null,
    retry: null,
  };
  window.dialer = app;   // for tests and the console

  function log(text) {
    const li = document.createElement('li');
    li.textContent = new Date().toISOString().slice(11, 23) + ' ' + text;
    el.log.appendChild(li);
    while (el.log.children.length > 200) el.log.removeChild(el.log.firstChild);
    el.log.scrollTop = el.log.scrollHeight;
  }

  function presence(text, kind) {
    el.presence.textContent = text;
    el.presence.className = 'pill ' + kind;
  }

  function describeReason(param) {
    const name = PlanetKit.disconnectReasonName(param.reason.code) || param.reason.strCode;
    return name + ' (' + param.reason.code + ') by ' + param.source;
  }

  function inCall() {
    return !!(app.call && app.call.state !== 'idle' && app.call.state !== 'disconnected');
  }

  function setState(state, label) {
    el.state.dataset.state = state;
    el.state.textContent = label || state;
    const busy = inCall();
    el.hangup.disabled = !busy;
    el.call.disabled = busy;
    el.mute.disabled = state !== 'connected';
    el.hold.disabled = state !== 'connected';
    el.keypad.querySelectorAll('button').forEach(function (b) { b.disabled = state !== 'connected'; });
    if (state !== 'connected') {
      el.mute.setAttribute('aria-pressed', 'false');
      el.mute.textContent = 'Mute';
      el.hold.setAttribute('aria-pressed', 'false');
      el.hold.textContent = 'Hold';
      showHold(false, false);
    }
  }

  /** "on hold" as the user should read it: who holds the call. */
  function showHold(mine, peer) {
    el.holdState.dataset.mine = String(mine);
    el.holdState.dataset.peer = String(peer);
    el.holdState.textContent = mine && peer ? 'on hold (both)' : mine ? 'on hold (by you)'
      : peer ? 'on hold (by the peer)' : '-';
    if (el.state.dataset.state === 'connected') el.state.textContent = mine || peer ? 'on hold' : 'connected';
  }

  function startTimer() {
    app.connectedAt = Date.now();
    stopTimer();
    const show = function () {
      const s = Math.floor((Date.now() - app.connectedAt) / 1000);
      el.timer.textContent = String(Math.floor(s / 60)).padStart(2, '0') + ':' + String(s % 60).padStart(2, '0');
    };
    show();
    app.tick = setInterval(show, 1000);
  }

  function stopTimer() {
    if (app.tick) clearInterval(app.tick);
    app.tick = null;
  }

  function failText(err) {
    if (err && err.reason !== undefined) return err.reason + ': ' + err.message;
    return String(err && err.message || err);
  }

  // --- tokens ------------------------------------------------------------------------------

  async function fetchDevToken(service, user) {
    const r = await fetch('/v1/dev/token', {
      method: 'POST', headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({service: service, user: user}),
    });
    const body = await r.json().catch(function () { return {}; });
    if (!r.ok) throw new Error(body.message || ('dev token refused: HTTP ' + r.status));
    return body.token;
  }

  /** A token for the next platform request: fresh from the daemon when dev tokens are on. */
  async function currentToken() {
    if (app.me.dev) app.me.token = await fetchDevToken(app.me.service, app.me.user);
    return app.me.token;
  }

  // --- sign in / listen ----------------------------------------------------------------------

  async function signIn(event) {
    event.preventDefault();
    el.signinError.hidden = true;
    const user = el.user.value.trim();
    const service = el.service.value.trim();
    let token = el.token.value.trim();
    const dev = app.devTokens && (!token || el.token.dataset.dev === 'true');
    try {
      if (dev) token = await fetchDevToken(service, user);
      if (!token) throw new Error('paste an access token (bridge token --service ' + service + ' --user ' + user + ')');
      app.me = {user: user, service: service, token: token, dev: dev};
      await startListening();
    } catch (err) {
      app.me = null;
      el.signinError.textContent = failText(err);
      el.signinError.hidden = false;
      log('sign-in failed: ' + failText(err));
      return;
    }
    el.me.textContent = user + '@' + service;
    el.signin.hidden = true;
    el.session.hidden = false;
    setState('idle');
    log('signed in as ' + user + '@' + service + (dev ? ' (dev tokens)' : ''));
  }

  async function startListening() {
    const me = app.me;
    const token = app.listener ? await currentToken() : me.token;
    app.listener = await PlanetKit.listen({
      myId: me.user, myServiceId: me.service, accessToken: token,
      onPush: onPush,
      onClose: function (param) {
        if (app.me !== me) return;
        app.listener = null;
        presence('offline', 'bad');
        log('push session closed' + (param ? ': ' + describeReason(param) : ''));
        app.retry = setTimeout(relisten, 3000);
      },
    });
    presence('listening as ' + me.user + '@' + me.service, 'on');
  }

  async function relisten() {
    if (!app.me) return;
    try {
      await startListening();
      log('push session restored');
    } catch (err) {
      log('cannot listen: ' + failText(err));
      app.retry = setTimeout(relisten, 5000);
    }
  }

  function signOut() {
    if (inCall()) app.call.endCall();
    app.me = null;
    clearTimeout(app.retry);
    if (app.listener) app.listener.close();
    app.listener = null;
    el.session.hidden = true;
    el.signin.hidden = false;
    el.incoming.hidden = true;
    presence('signed out', 'off');
    log('signed out');
  }

  // --- calls -----------------------------------------------------------------------------------

  function delegate(call) {
    const mine = function (fn) { return function () { if (app.call === call) fn.apply(null, arguments); }; };
    return {
      evtWaitConnected: mine(function () { setState('ringing', 'ringing'); log('evtWaitConnected'); }),
      evtVerified: mine(function (param) {
        log('evtVerified from ' + param.peerId + '@' + param.peerServiceId);
        setState('ringing', 'incoming call');
        el.incoming.hidden = false;
      }),
      evtConnected: mine(function () {
        el.incoming.hidden = true;
        setState('connected', 'connected');
        startTimer();
        log('evtConnected');
      }),
      evtDisconnected: mine(function (param) {
        el.incoming.hidden = true;
        stopTimer();
        el.reason.textContent = describeReason(param);
        el.reason.dataset.code = String(param.reason.code);
        el.reason.dataset.name = PlanetKit.disconnectReasonName(param.reason.code) || '';
        setState('disconnected', 'ended');
        log('evtDisconnected ' + describeReason(param) + ' ' + param.reason.strCode);
      }),
      evtPeerMicMuted: mine(function () { el.peer.dataset.muted = 'true'; log('peer muted'); }),
      evtPeerMicUnmuted: mine(function () { el.peer.dataset.muted = 'false'; log('peer unmuted'); }),
      evtDtmf: mine(function (digits) { el.dtmfReceived.textContent += digits; log('DTMF received ' + digits); }),
      evtPeerHold: mine(function () { showHold(call.held, true); log('evtPeerHold: the peer holds the call'); }),
      evtPeerUnhold: mine(function () { showHold(call.held, false); log('evtPeerUnhold: the peer resumed'); }),
    };
  }

  function resetCallView(peer) {
    el.peer.textContent = peer;
    el.timer.textContent = '-';
    el.reason.textContent = '-';
    el.reason.dataset.code = '';
    el.reason.dataset.name = '';
    el.dtmfSent.textContent = '';
    el.dtmfReceived.textContent = '';
  }

  async function dial(event) {
    event.preventDefault();
    if (inCall() || !app.me) return;
    const text = el.callee.value.trim();
    const at = text.lastIndexOf('@');
    const peerId = at >= 0 ? text.slice(0, at) : text;
    const peerServiceId = at >= 0 ? text.slice(at + 1) : app.me.service;
    const call = new PlanetKit.Call();
    app.call = call;
    resetCallView(peerId + '@' + peerServiceId);
    setState('calling', 'calling');
    log('makeCall ' + peerId + '@' + peerServiceId);
    try {
      await call.makeCall({
        myId: app.me.user, myServiceId: app.me.service, peerId: peerId, peerServiceId: peerServiceId,
        accessToken: await currentToken(), mediaType: 'audio',
        mediaHtmlElement: {peer: {audio: el.audio}}, delegate: delegate(call),
      });
      log('makeCall resolved (sid ' + call.sid + ')');
    } catch (err) {
      if (app.call === call) {
        el.reason.textContent = failText(err);
        setState('idle', 'not started');
      }
      log('makeCall rejected: ' + failText(err));
    }
  }

  async function onPush(push) {
    log('push: call from ' + push.caller_id + '@' + push.caller_service_id);
    if (inCall()) {
      log('busy: the push is ignored');
      return;
    }
    const call = new PlanetKit.Call();
    app.call = call;
    app.incoming = push;
    resetCallView(push.caller_id + '@' + push.caller_service_id);
    el.incomingFrom.textContent = push.caller_id + '@' + push.caller_service_id;
    setState('calling', 'incoming call');
    try {
      await call.verifyCall({
        myId: push.app_callee_uid, myServiceId: push.app_callee_sid, ccParam: push.cc_param,
        mediaType: push.app_call_type, mediaHtmlElement: {peer: {audio: el.audio}}, delegate: delegate(call),
      });
    } catch (err) {
      log('verifyCall rejected: ' + failText(err));
      if (app.call === call) setState('idle', 'not started');
    }
  }

  async function accept() {
    if (!app.call) return;
    el.incoming.hidden = true;
    try {
      await app.call.acceptCall();
    } catch (err) {
      log('acceptCall failed: ' + failText(err));
    }
  }

  function hangup() {
    if (app.call) app.call.endCall();
  }

  function toggleMute() {
    if (!app.call || app.call.state !== 'connected') return;
    const muted = el.mute.getAttribute('aria-pressed') !== 'true';
    app.call.muteMyAudio(muted);
    el.mute.setAttribute('aria-pressed', String(muted));
    el.mute.textContent = muted ? 'Unmute' : 'Mute';
    log(muted ? 'muted' : 'unmuted');
  }

  function toggleHold() {
    const call = app.call;
    if (!call || call.state !== 'connected') return;
    const held = el.hold.getAttribute('aria-pressed') !== 'true';
    (held ? call.hold() : call.unhold()).then(function () {
      el.hold.setAttribute('aria-pressed', String(held));
      el.hold.textContent = held ? 'Resume' : 'Hold';
      showHold(held, call.peerHeld);
      log(held ? 'hold' : 'unhold');
    }, function (err) { log('hold: ' + failText(err)); });
  }

  function pressKey(event) {
    const digit = event.target && event.target.dataset && event.target.dataset.digit;
    if (!digit || !app.call) return;
    app.call.sendDtmf(digit).then(function () {
      el.dtmfSent.textContent += digit;
    }, function (err) { log('sendDtmf: ' + failText(err)); });
  }

  async function loadConfig() {
    try {
      const r = await fetch('/dialer/config.json', {cache: 'no-store'});
      const cfg = await r.json();
      app.devTokens = !!cfg.dev_tokens;
    } catch (err) {
      app.devTokens = false;
    }
    el.devToken.hidden = !app.devTokens;
    if (app.devTokens) {
      el.token.placeholder += ' (or leave empty: this daemon issues development tokens)';
    }
    document.body.dataset.ready = 'true';
  }

  el.devToken.addEventListener('click', async function () {
    el.signinError.hidden = true;
    try {
      el.token.value = await fetchDevToken(el.service.value.trim(), el.user.value.trim());
      el.token.dataset.dev = 'true';   // fresh ones are fetched for each call
      log('got a development token');
    } catch (err) {
      el.signinError.textContent = failText(err);
      el.signinError.hidden = false;
    }
  });
  el.token.addEventListener('input', function () { el.token.dataset.dev = 'false'; });
  el.signinForm.addEventListener('submit', signIn);
  el.signOut.addEventListener('click', signOut);
  el.dialForm.addEventListener('submit', dial);
  el.accept.addEventListener('click', accept);
  el.decline.addEventListener('click', hangup);
  el.hangup.addEventListener('click', hangup);
  el.mute.addEventListener('click', toggleMute);
  el.hold.addEventListener('click', toggleHold);
  el.keypad.addEventListener('click', pressKey);
  setState('idle');
  loadConfig();
})();
