/*
 * bridge's browser SDK: the seed's 1-to-1 audio call Web API over bridge's open signalling
 * (one WebSocket per call leg at /v1/ws, JSON messages; see bridge/protocol.py).
 *
 *   const planetKit = new PlanetKit.Call();            // talks to the daemon that served this file
 *   planetKit.makeCall({myId, myServiceId, peerId, peerServiceId, accessToken, mediaType: 'audio',
 *                       mediaHtmlElement: {peer: {audio: audioElement}}, delegate: {...}})
 *     .then(() => ...).catch(({reason, message}) => ...);   // only local validation rejects
 *   planetKit.verifyCall({myId, myServiceId, ccParam, mediaType, mediaHtmlElement, delegate});
 *   planetKit.acceptCall(); planetKit.endCall(); planetKit.muteMyAudio(true);
 *   planetKit.sendDtmf('123#');                          // bridge's extension
 *   planetKit.hold(); planetKit.unhold();               // bridge's extension (native SDKs have it)
 *
 *   // bridge's extension: receive pushes from the platform without an app server
 *   const listener = await PlanetKit.listen({myId, myServiceId, accessToken,
 *                                            onPush: (push) => ..., onClose: (param) => ...});
 *
 * STUN/TURN servers come from the platform with each call (its `webrtc.ice_servers`; TURN
 * credentials may be minted for the call): the caller asks for them before its offer, the callee
 * gets them with `verified`. `new PlanetKit.Call({iceTransportPolicy: 'relay'})` (bridge's
 * extension) uses TURN relay candidates only.
 *
 * Delegates: evtWaitConnected(), evtVerified({sid, peerId, peerServiceId, appServerData}),
 * evtConnected(), evtDisconnected({source, reason: {code, strCode}}), evtPeerMicMuted(),
 * evtPeerMicUnmuted(), evtDtmf(digits), evtPeerHold(), evtPeerUnhold() (extensions).
 * Licence: GPL-3.0-or-later.
 */
(function (global) {
  'use strict';

  const VERSION = '0.1.0';

  const START_FAIL_REASON = Object.freeze({
    NONE: 'none',
    INVALID_PARAM: 'invalid_param',
    DECODE_CALL_PARAM: 'decode_call_param',
    ID_CONFLICT: 'id_conflict',
    INVALID_USER_ID: 'invalid_user_id',
    INVALID_SERVICE_ID: 'invalid_service_id',
    INVALID_API_KEY: 'invalid_api_key',
    TOO_LONG_APP_SERVER_DATA: 'too_long_app_server_data',
    BROWSER_NOT_SUPPORTED: 'browser_not_supported',
    INVALID_MEDIA_TYPE: 'invalid_media_type',
    INTERNAL_INITIALIZATION_ERROR: 'internal_initialization_error',
  });

  const REASON_CODES = {
    NORMAL: 1001, DECLINE: 1002, INTERNAL_ERROR: 1109, USER_ERROR: 1110, AUDIO_TX_NO_SRC: 1112,
    CANCEL: 1201, BUSY: 1202, NOANSWER: 1203, ALREADY_GOT_A_CALL: 1204, MULTIDEV_IN_USE: 1205,
    MAX_CALL_TIME_EXCEEDED: 1208, NETWORK_UNSTABLE: 1301, PUSH_ERROR: 1302, AUTH_ERROR: 1303,
    RELEASED_CALL: 1304, SERVER_INTERNAL_ERROR: 1305, UNAVAILABLE_NETWORK: 1308, APP_DESTROY: 1309,
    SERVICE_ACCESS_TOKEN_ERROR: 1501, SERVICE_INVALID_ID: 1502, SERVICE_MAINTENANCE: 1503,
    SERVICE_BUSY: 1504, SERVICE_INTERNAL_ERROR: 1505, SERVICE_TOO_MANY_REQUESTS: 1512,
    WEB_RTC_NOT_ALLOWED: 1602, WEB_NO_MEDIA_PACKET: 1608, WEB_SIGNALING_UNEXPECTED_DISCONNECTED: 1611,
  };

  const STR_PREFIX = 'PLANETKIT_DISCONNECT_REASON_';
  const DISCONNECT_REASON = {};
  const NAME_BY_CODE = {};
  Object.keys(REASON_CODES).forEach(function (name) {
    DISCONNECT_REASON[name] = Object.freeze({code: REASON_CODES[name], strCode: STR_PREFIX + name});
    NAME_BY_CODE[REASON_CODES[name]] = name;
  });
  Object.freeze(DISCONNECT_REASON);

  const DISCONNECT_SOURCE = Object.freeze({
    CALLEE: 'callee', CALLER: 'caller', PARTICIPANT: 'participant',
    CLOUD_SERVER: 'cloud_server', APP_SERVER: 'app_server',
  });

  const USER_ID = /^[a-zA-Z0-9_-]{1,64}$/;
  const SERVICE_ID = /^[a-zA-Z0-9.-]{1,64}$/;
  const DTMF_DIGITS = /^[0-9*#A-Da-d]{1,32}$/;
  const MAX_APP_SERVER_DATA = 4096;
  const MAC_BYTES = 32;
  const ICE_GATHERING_TIMEOUT_MS = 5000;
  const END_CALL_TIMEOUT_MS = 3000;

  // The daemon that served this file: its /v1/ws is the default platform.
  const SCRIPT_ORIGIN = (function () {
    try {
      const src = global.document && global.document.currentScript && global.document.currentScript.src;
      if (src) return new URL(src).origin;
    } catch (e) { /* fall through */ }
    return global.location ? global.location.origin : null;
  })();

  // --- helpers ----------------------------------------------------------------------------

  function startFail(reason, message) {
    return {reason: reason, message: message};
  }

  function disconnectedParam(source, code) {
    code = Number(code);
    const name = NAME_BY_CODE[code] || 'INTERNAL_ERROR';
    return {source: source, reason: {code: REASON_CODES[name], strCode: STR_PREFIX + name}};
  }

  /** The name of a disconnect reason code (1002 -> 'DECLINE'), or undefined. */
  function disconnectReasonName(code) {
    return NAME_BY_CODE[Number(code)];
  }

  function byteLength(text) {
    return new TextEncoder().encode(text).length;
  }

  function wsUrl(url) {
    if (typeof url !== 'string' || !url) return null;
    if (/^wss?:\/\//.test(url)) return url;
    if (/^https?:\/\//.test(url)) return url.replace(/^http/, 'ws').replace(/\/+$/, '') + '/v1/ws';
    return null;
  }

  function base64UrlDecode(text) {
    if (!/^[A-Za-z0-9_-]+={0,2}$/.test(text)) throw new Error('cc_param is not base64url');
    let b64 = text.replace(/=+$/, '').replace(/-/g, '+').replace(/_/g, '/');
    if (b64.length % 4 === 1) throw new Error('cc_param is not base64url');
    while (b64.length % 4) b64 += '=';
    const bin = global.atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes;
  }

  /** Decode cc_param locally (no signature check): base64url(JSON payload || 32-byte MAC). */
  function decodeCcParam(ccParam) {
    if (typeof ccParam !== 'string' || ccParam.length === 0 || ccParam.length > 4096) {
      throw new Error('ccParam must be a non-empty string');
    }
    const raw = base64UrlDecode(ccParam);
    if (raw.length <= MAC_BYTES) throw new Error('ccParam is too short');
    let data;
    try {
      data = JSON.parse(new TextDecoder('utf-8', {fatal: true}).decode(raw.subarray(0, raw.length - MAC_BYTES)));
    } catch (e) {
      throw new Error('ccParam content is malformed');
    }
    const ok = data && typeof data === 'object' && data.v === 1 && typeof data.sid === 'string' &&
      Array.isArray(data.to) && data.to.length === 2 && Array.isArray(data.from) && data.from.length === 2 &&
      typeof data.url === 'string' && typeof data.exp === 'number';
    if (!ok) throw new Error('ccParam content is malformed or of an unsupported version');
    return {sid: data.sid, calleeServiceId: data.to[0], calleeId: data.to[1], callerServiceId: data.from[0],
            callerId: data.from[1], platformUrl: data.url, expires: data.exp};
  }

  function validateIds(myId, myServiceId, mediaType) {
    if (typeof myId !== 'string' || !USER_ID.test(myId)) {
      return startFail(START_FAIL_REASON.INVALID_USER_ID, 'myId ' + JSON.stringify(myId) +
                       ' must match ^[a-zA-Z0-9_-]{1,64}$');
    }
    if (typeof myServiceId !== 'string' || !SERVICE_ID.test(myServiceId)) {
      return startFail(START_FAIL_REASON.INVALID_SERVICE_ID, 'myServiceId ' + JSON.stringify(myServiceId) +
                       ' must match ^[a-zA-Z0-9.-]{1,64}$');
    }
    if (mediaType !== 'audio') {
      return startFail(START_FAIL_REASON.INVALID_MEDIA_TYPE, 'mediaType ' + JSON.stringify(mediaType) +
                       ": only 'audio' is supported");
    }
    return null;
  }

  function browserSupport() {
    if (typeof global.RTCPeerConnection !== 'function' || typeof global.WebSocket !== 'function' ||
        !global.navigator || !global.navigator.mediaDevices || !global.navigator.mediaDevices.getUserMedia) {
      return startFail(START_FAIL_REASON.BROWSER_NOT_SUPPORTED,
                       'this browser lacks WebRTC, WebSocket or getUserMedia (a secure context is needed)');
    }
    return null;
  }

  function waitIceGathering(pc) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise(function (resolve) {
      const timer = setTimeout(done, ICE_GATHERING_TIMEOUT_MS);
      function done() {
        clearTimeout(timer);
        pc.removeEventListener('icegatheringstatechange', check);
        pc.removeEventListener('icecandidate', onCandidate);
        resolve();
      }
      function check() { if (pc.iceGatheringState === 'complete') done(); }
      function onCandidate(event) { if (!event.candidate) done(); }
      pc.addEventListener('icegatheringstatechange', check);
      pc.addEventListener('icecandidate', onCandidate);
    });
  }

  // --- Call -------------------------------------------------------------------------------

  /**
   * One 1-to-1 audio call at a time, as caller (makeCall) or callee (verifyCall).
   * options: {platformUrl: 'http(s)://host:port' or 'ws(s)://host:port/v1/ws',
   *           audioConstraints: MediaTrackConstraints or true (the microphone),
   *           iceTransportPolicy: 'all' (default) or 'relay' (TURN only)}
   */
  function Call(options) {
    if (!(this instanceof Call)) return new Call(options);
    options = options || {};
    this.platformUrl = options.platformUrl || null;
    this.audioConstraints = options.audioConstraints === undefined ? true : options.audioConstraints;
    this.iceTransportPolicy = options.iceTransportPolicy === 'relay' ? 'relay' : 'all';
    this._reset();
  }

  Call.prototype._reset = function () {
    this.state = 'idle';             // idle, calling, verified, connected, disconnected
    this.role = null;                // 'caller' or 'callee'
    this.sid = null;
    this.peer = null;                // {sid, peerId, peerServiceId, appServerData}
    this.disconnected = null;        // the evtDisconnected param
    this.errors = [];                // platform `error` messages
    this.muted = false;
    this.held = false;               // this side holds the call (hold())
    this.peerHeld = false;           // the peer holds it (evtPeerHold)
    this.peerStream = null;
    this._delegate = {};
    this._ws = null;
    this._pc = null;
    this.iceServers = [];            // what the platform handed for this call
    this._makeCall = null;           // the caller's make_call, sent once its offer is gathered
    this._mic = null;                // the local MediaStream
    this._audioElement = null;
    this._first = null;              // {resolve} for makeCall/verifyCall
    this._accept = null;             // {resolve, reject} for acceptCall
    this._ended = [];                // resolvers waiting for the end
  };

  Call.prototype._checkIdle = function () {
    if (this.state !== 'idle' && this.state !== 'disconnected') {
      return startFail(START_FAIL_REASON.INVALID_PARAM, 'this Call has a call in progress (state ' +
                       this.state + '); end it or create a new PlanetKit.Call');
    }
    return null;
  };

  Call.prototype._url = function (fallback) {
    const url = wsUrl(this.platformUrl || SCRIPT_ORIGIN || fallback);
    return url;
  };

  /** Place a call. Resolves once the platform took it (or refused it: see evtDisconnected). */
  Call.prototype.makeCall = function (params) {
    const self = this;
    params = params || {};
    const problem = this._checkIdle() || browserSupport() ||
      validateIds(params.myId, params.myServiceId, params.mediaType) || (function () {
        if (typeof params.peerId !== 'string' || !USER_ID.test(params.peerId)) {
          return startFail(START_FAIL_REASON.INVALID_USER_ID, 'peerId ' + JSON.stringify(params.peerId) +
                           ' is not a valid user id');
        }
        if (typeof params.peerServiceId !== 'string' || !SERVICE_ID.test(params.peerServiceId)) {
          return startFail(START_FAIL_REASON.INVALID_SERVICE_ID, 'peerServiceId ' +
                           JSON.stringify(params.peerServiceId) + ' is not a valid service id');
        }
        if (params.myId === params.peerId && params.myServiceId === params.peerServiceId) {
          return startFail(START_FAIL_REASON.ID_CONFLICT, 'a user cannot call itself');
        }
        if (typeof params.accessToken !== 'string' || !params.accessToken) {
          return startFail(START_FAIL_REASON.INVALID_PARAM, 'accessToken is required');
        }
        const data = params.appServerData;
        if (data !== undefined && data !== null &&
            (typeof data !== 'string' || byteLength(data) > MAX_APP_SERVER_DATA)) {
          return startFail(START_FAIL_REASON.TOO_LONG_APP_SERVER_DATA,
                           'appServerData must be a string of at most ' + MAX_APP_SERVER_DATA + ' bytes');
        }
        if (!self._url()) {
          return startFail(START_FAIL_REASON.INVALID_PARAM, 'platformUrl ' + JSON.stringify(self.platformUrl) +
                           ' must be http(s):// or ws(s)://');
        }
        return null;
      })();
    if (problem) return Promise.reject(problem);
    this._reset();
    this.role = 'caller';
    this.state = 'calling';
    this._delegate = params.delegate || {};
    this._audioElement = peerAudioElement(params);
    this._makeCall = {
      type: 'make_call', token: params.accessToken, my_id: params.myId,
      my_service_id: params.myServiceId, peer_id: params.peerId,
      peer_service_id: params.peerServiceId, media_type: params.mediaType,
      app_server_data: params.appServerData === undefined ? null : params.appServerData,
    };
    return this._microphone().then(function () {
      // first the ICE servers for this call (with the token), then the offer gathered with them
      return self._open(self._url(), {type: 'ice_servers', token: params.accessToken, my_id: params.myId,
                                      my_service_id: params.myServiceId});
    });
  };

  /** The caller's offer, gathered with the servers the platform handed, in make_call. */
  Call.prototype._offer = async function (iceServers) {
    const pc = this._newPeerConnection(iceServers);
    const mic = this._mic;
    mic.getAudioTracks().forEach(function (track) { pc.addTrack(track, mic); });
    await pc.setLocalDescription(await pc.createOffer());
    await waitIceGathering(pc);
    if (this.state === 'disconnected') return;
    const message = Object.assign({}, this._makeCall, {sdp: pc.localDescription.sdp});
    this._makeCall = null;
    this._send(message);
  };

  /** Answer a push: check ccParam with the platform. Resolves once verified (or refused). */
  Call.prototype.verifyCall = function (params) {
    const self = this;
    params = params || {};
    let cc = null;
    let problem = this._checkIdle() || browserSupport() ||
      validateIds(params.myId, params.myServiceId, params.mediaType);
    if (!problem) {
      try {
        cc = decodeCcParam(params.ccParam);
      } catch (e) {
        problem = startFail(START_FAIL_REASON.DECODE_CALL_PARAM, e.message);
      }
    }
    if (problem) return Promise.reject(problem);
    const url = this._url(cc.platformUrl);
    if (!url) {
      return Promise.reject(startFail(START_FAIL_REASON.INVALID_PARAM, 'platformUrl ' +
                                      JSON.stringify(this.platformUrl) + ' must be http(s):// or ws(s)://'));
    }
    this._reset();
    this.role = 'callee';
    this.state = 'calling';
    this._delegate = params.delegate || {};
    this._audioElement = peerAudioElement(params);
    return this._microphone().then(function () {   // the peer connection comes with `verified`
      return self._open(url, {type: 'verify_call', cc_param: params.ccParam, my_id: params.myId,
                              my_service_id: params.myServiceId, media_type: params.mediaType});
    });
  };

  /** Accept a verified call; resolves when connected, rejects if it ended instead. */
  Call.prototype.acceptCall = function () {
    const self = this;
    if (this.role !== 'callee' || this.state !== 'verified') {
      return Promise.reject(startFail(START_FAIL_REASON.INVALID_PARAM,
                                      'acceptCall needs a verified incoming call (state ' + this.state + ')'));
    }
    return new Promise(function (resolve, reject) {
      self._accept = {resolve: resolve, reject: reject};
      self._send({type: 'accept_call'});
    });
  };

  /** Hang up (decline before accepting, cancel before an answer). Resolves with how it ended. */
  Call.prototype.endCall = function () {
    const self = this;
    if (this.state === 'idle' || this.state === 'disconnected') return Promise.resolve(this.disconnected);
    return new Promise(function (resolve) {
      self._ended.push(resolve);
      self._send({type: 'end_call'});
      setTimeout(function () {
        if (self.state === 'disconnected') return;
        const code = self.state === 'connected' ? REASON_CODES.NORMAL
          : (self.role === 'caller' ? REASON_CODES.CANCEL : REASON_CODES.DECLINE);
        self._finish(disconnectedParam(self.role || 'caller', code));
      }, END_CALL_TIMEOUT_MS);
    });
  };

  /** Send silence instead of the microphone while muted; the peer gets evtPeerMicMuted/Unmuted. */
  Call.prototype.muteMyAudio = function (muted) {
    this.muted = !!muted;
    this._gate();
    this._send({type: 'mute', muted: this.muted});
    return Promise.resolve();
  };

  /**
   * bridge's extension: put the call on hold (the microphone sends silence) or resume it; the
   * peer gets evtPeerHold / evtPeerUnhold (a desk phone: a re-INVITE, sendonly then sendrecv).
   */
  Call.prototype.hold = function () { return this._hold(true); };
  Call.prototype.unhold = function () { return this._hold(false); };

  Call.prototype._hold = function (held) {
    if (this.state !== 'connected') {
      return Promise.reject(startFail(START_FAIL_REASON.INVALID_PARAM,
                                      (held ? 'hold' : 'unhold') + ' needs a connected call'));
    }
    this.held = held;
    this._gate();
    this._send({type: 'hold', held: held});
    return Promise.resolve();
  };

  /** bridge's extension: DTMF digits to the peer (a desk phone gets RFC 4733 telephone-events). */
  Call.prototype.sendDtmf = function (digits) {
    if (typeof digits !== 'string' || !DTMF_DIGITS.test(digits)) {
      return Promise.reject(startFail(START_FAIL_REASON.INVALID_PARAM, 'digits must be 1-32 of 0-9 * # A-D'));
    }
    if (this.state !== 'connected') {
      return Promise.reject(startFail(START_FAIL_REASON.INVALID_PARAM, 'sendDtmf needs a connected call'));
    }
    this._send({type: 'dtmf', digits: digits});
    return Promise.resolve();
  };

  // --- internals --------------------------------------------------------------------------

  function peerAudioElement(params) {
    const el = params.mediaHtmlElement && params.mediaHtmlElement.peer && params.mediaHtmlElement.peer.audio;
    if (el) return el;
    const audio = global.document.createElement('audio');   // the peer is heard even without one
    audio.autoplay = true;
    return audio;
  }

  Call.prototype._microphone = function () {
    const self = this;
    return global.navigator.mediaDevices.getUserMedia({audio: this.audioConstraints, video: false})
      .then(function (stream) {
        self._mic = stream;
        self._gate();                 // held back until connected: a disabled track sends silence
      }, function (err) {
        self.state = 'idle';
        throw startFail(START_FAIL_REASON.INTERNAL_INITIALIZATION_ERROR,
                        'cannot open the microphone: ' + (err && (err.name + ': ' + err.message)));
      });
  };

  Call.prototype._gate = function () {
    const open = this.state === 'connected' && !this.muted && !this.held;
    if (this._mic) this._mic.getAudioTracks().forEach(function (t) { t.enabled = open; });
  };

  /** Only well-formed RTCIceServer entries: a malformed one would make the constructor throw. */
  function iceServerList(servers) {
    if (!Array.isArray(servers)) return [];
    return servers.filter(function (s) {
      const urls = s && (typeof s.urls === 'string' ? [s.urls] : s.urls);
      return Array.isArray(urls) && urls.length > 0 && urls.every(function (u) { return typeof u === 'string'; });
    }).map(function (s) {
      const entry = {urls: s.urls};
      if (typeof s.username === 'string') entry.username = s.username;
      if (typeof s.credential === 'string') entry.credential = s.credential;
      return entry;
    });
  }

  Call.prototype._newPeerConnection = function (iceServers) {
    const self = this;
    this.iceServers = iceServerList(iceServers);
    const pc = new global.RTCPeerConnection({iceServers: this.iceServers,
                                             iceTransportPolicy: this.iceTransportPolicy});
    this._pc = pc;
    pc.addEventListener('track', function (event) {
      if (event.track.kind !== 'audio') return;
      const stream = event.streams && event.streams[0] ? event.streams[0] : new global.MediaStream([event.track]);
      self.peerStream = stream;
      const el = self._audioElement;
      if (el) {
        el.srcObject = stream;
        const played = el.play && el.play();
        if (played && played.catch) played.catch(function () { /* autoplay policy: the app may retry */ });
      }
    });
    pc.addEventListener('connectionstatechange', function () {
      if (pc.connectionState === 'failed' && self.state !== 'disconnected') {
        console.warn('PlanetKit: media connection failed (call ' + self.sid + ')');
        self._send({type: 'end_call'});
      }
    });
    return pc;
  };

  Call.prototype._open = function (url, opening) {
    const self = this;
    return new Promise(function (resolve) {
      self._first = resolve;
      let ws;
      try {
        ws = new global.WebSocket(url);
      } catch (e) {
        self._finish(disconnectedParam(DISCONNECT_SOURCE.CLOUD_SERVER, REASON_CODES.UNAVAILABLE_NETWORK));
        return;
      }
      self._ws = ws;
      let opened = false;
      ws.onopen = function () {
        opened = true;
        ws.send(JSON.stringify(opening));
      };
      ws.onmessage = function (event) {
        let m;
        try { m = JSON.parse(event.data); } catch (e) { return; }
        self._handle(m).catch(function (err) {
          console.error('PlanetKit: cannot handle ' + (m && m.type), err);
        });
      };
      ws.onclose = function () {
        if (self._ws !== ws) return;
        const code = opened ? REASON_CODES.WEB_SIGNALING_UNEXPECTED_DISCONNECTED : REASON_CODES.UNAVAILABLE_NETWORK;
        self._finish(disconnectedParam(DISCONNECT_SOURCE.CLOUD_SERVER, code));
      };
    });
  };

  Call.prototype._send = function (message) {
    const ws = this._ws;
    if (ws && ws.readyState === 1) ws.send(JSON.stringify(message));
  };

  Call.prototype._resolveFirst = function () {
    const first = this._first;
    this._first = null;
    if (first) first();
  };

  Call.prototype._handle = async function (m) {
    if (this.state === 'disconnected') return;
    switch (m.type) {
      case 'ice_servers':
        if (this._makeCall && !this._pc) await this._offer(m.ice_servers);
        break;
      case 'call_made':
        this.sid = m.sid;
        this._resolveFirst();
        break;
      case 'verified': {
        if (this._pc) break;
        this.sid = m.sid;
        this.peer = {sid: m.sid, peerId: m.peer_id, peerServiceId: m.peer_service_id,
                     appServerData: m.app_server_data === undefined ? null : m.app_server_data};
        const pc = this._newPeerConnection(m.ice_servers);
        await pc.setRemoteDescription({type: 'offer', sdp: m.sdp});
        const mic = this._mic;
        mic.getAudioTracks().forEach(function (track) { pc.addTrack(track, mic); });
        await pc.setLocalDescription(await pc.createAnswer());
        await waitIceGathering(pc);
        if (this.state === 'disconnected') return;
        this._send({type: 'answer', sdp: pc.localDescription.sdp});
        this.state = 'verified';
        this._emit('evtVerified', this.peer);
        this._resolveFirst();
        break;
      }
      case 'sdp':
        if (this._pc) await this._pc.setRemoteDescription({type: 'answer', sdp: m.sdp});
        break;
      case 'wait_connected':
        this._emit('evtWaitConnected');
        break;
      case 'connected': {
        this.state = 'connected';
        this._gate();
        this._emit('evtConnected');
        const accept = this._accept;
        this._accept = null;
        if (accept) accept.resolve();
        break;
      }
      case 'disconnected':
        this._finish(disconnectedParam(m.source || DISCONNECT_SOURCE.CLOUD_SERVER, m.code));
        break;
      case 'peer_mute':
        this._emit(m.muted ? 'evtPeerMicMuted' : 'evtPeerMicUnmuted');
        break;
      case 'dtmf':
        this._emit('evtDtmf', m.digits || '');
        break;
      case 'peer_hold':
        if (typeof m.held !== 'boolean') break;
        this.peerHeld = m.held;
        this._emit(m.held ? 'evtPeerHold' : 'evtPeerUnhold');
        break;
      case 'error':
        console.warn('PlanetKit: the platform says ' + m.code + ': ' + m.message);
        this.errors.push(m);
        break;
      default:
        break;
    }
  };

  Call.prototype._finish = function (param) {
    if (this.state === 'disconnected') return;
    this.state = 'disconnected';
    this.disconnected = param;
    this._resolveFirst();
    const accept = this._accept;
    this._accept = null;
    if (accept) accept.reject(startFail(START_FAIL_REASON.NONE, 'the call ended: ' + param.reason.strCode));
    if (this._mic) this._mic.getTracks().forEach(function (t) { t.stop(); });
    if (this._pc) { try { this._pc.close(); } catch (e) { /* closed */ } }
    const ws = this._ws;
    this._ws = null;
    if (ws) { try { ws.close(); } catch (e) { /* closed */ } }
    const waiting = this._ended;
    this._ended = [];
    waiting.forEach(function (resolve) { resolve(param); });
    this._emit('evtDisconnected', param);
  };

  Call.prototype._emit = function (name) {
    const handler = this._delegate && this._delegate[name];
    if (typeof handler !== 'function') return;
    const args = Array.prototype.slice.call(arguments, 1);
    try {
      handler.apply(this._delegate, args);
    } catch (e) {
      console.error('PlanetKit: delegate ' + name + ' failed', e);
    }
  };

  // --- listen: the platform's embedded push -------------------------------------------------

  /**
   * Receive call pushes for one user (bridge's extension; an app server's push does the same).
   * Resolves with {close()} once the platform listens; rejects with {reason, message} on local
   * validation, or with {reason: 'none', message, disconnected} if the platform refuses.
   * onPush({cc_param, app_callee_uid, app_callee_sid, app_call_type, app_svr_data, sid,
   *         caller_id, caller_service_id}); onClose(disconnectedParam or null) when it ends.
   */
  function listen(params) {
    params = params || {};
    const problem = browserSupport() || validateIds(params.myId, params.myServiceId, 'audio') ||
      (typeof params.accessToken !== 'string' || !params.accessToken
        ? startFail(START_FAIL_REASON.INVALID_PARAM, 'accessToken is required') : null);
    if (problem) return Promise.reject(problem);
    const url = wsUrl(params.platformUrl || SCRIPT_ORIGIN);
    if (!url) return Promise.reject(startFail(START_FAIL_REASON.INVALID_PARAM, 'bad platformUrl'));
    return new Promise(function (resolve, reject) {
      const ws = new global.WebSocket(url);
      let listening = false;
      let closedBy = null;
      const handle = {
        close: function () { closedBy = closedBy || 'app'; ws.close(); },
        get listening() { return listening && ws.readyState === 1; },
      };
      ws.onopen = function () {
        ws.send(JSON.stringify({type: 'listen', token: params.accessToken, my_id: params.myId,
                                my_service_id: params.myServiceId}));
      };
      ws.onmessage = function (event) {
        let m;
        try { m = JSON.parse(event.data); } catch (e) { return; }
        if (m.type === 'listening') {
          listening = true;
          resolve(handle);
        } else if (m.type === 'push') {
          if (typeof params.onPush === 'function') {
            try { params.onPush(m); } catch (e) { console.error('PlanetKit: onPush failed', e); }
          }
        } else if (m.type === 'disconnected') {
          closedBy = disconnectedParam(m.source || DISCONNECT_SOURCE.CLOUD_SERVER, m.code);
        } else if (m.type === 'error') {
          console.warn('PlanetKit: listen: the platform says ' + m.code + ': ' + m.message);
        }
      };
      ws.onclose = function () {
        const param = closedBy === 'app' ? null : (closedBy ||
          disconnectedParam(DISCONNECT_SOURCE.CLOUD_SERVER,
                            listening ? REASON_CODES.WEB_SIGNALING_UNEXPECTED_DISCONNECTED
                              : REASON_CODES.UNAVAILABLE_NETWORK));
        if (!listening) {
          reject({reason: START_FAIL_REASON.NONE, disconnected: param,
                  message: 'listen refused: ' + (param ? param.reason.strCode + ' (' + param.reason.code + ')' : 'closed')});
          return;
        }
        listening = false;
        if (typeof params.onClose === 'function') {
          try { params.onClose(param); } catch (e) { console.error('PlanetKit: onClose failed', e); }
        }
      };
    });
  }

  global.PlanetKit = Object.freeze({
    VERSION: VERSION,
    Call: Call,
    listen: listen,
    START_FAIL_REASON: START_FAIL_REASON,
    DISCONNECT_REASON: DISCONNECT_REASON,
    DISCONNECT_SOURCE: DISCONNECT_SOURCE,
    disconnectReasonName: disconnectReasonName,
    decodeCcParam: decodeCcParam,
  });
})(typeof window !== 'undefined' ? window : globalThis);
