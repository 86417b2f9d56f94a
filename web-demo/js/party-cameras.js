// Webcams and microphones of party members, through the SFU's live rooms.
//
// Every member's camera is its own live room, `${party}-${memberId}` (the server upper-cases
// room codes). Turning the camera on opens a second WebSocket that joins that room as its
// host and publishes getUserMedia (js/rtc.js `Publisher`, as host.html does); once the room
// is ours the party socket says `{"type":"camera","on":true}` (the `onChange` callback).
// For every other member whose presence says `camera: true`, a viewer session on its own
// WebSocket (js/rtc.js `Subscriber`, as watch.html does) shows a tile. Each session
// reconnects by itself (js/signaling.js backoff; a failed peer connection rejoins).
import { Signaling } from './signaling.js';
import { Publisher, Subscriber } from './rtc.js';

/** Rejoin delays after a failed peer connection: first, growth, cap. */
const RETRY_START_MS = 1_000;
const RETRY_MAX_MS = 10_000;
/** The publisher may not have created its room yet when its presence arrives. */
const ROOM_NOT_FOUND_RETRY_MS = 2_000;
/** Errors after which our own camera stops (retrying would fight another tab). */
const PUBLISH_FATAL = new Set(['host_already_present', 'session_replaced', 'invalid_room', 'not_allowed', 'unsupported_version']);

export function cameraRoom(party, memberId) {
  return `${party}-${memberId}`.toUpperCase();
}

export class PartyCameras {
  /**
   * @param {object} o
   * @param {HTMLElement} o.container where tiles go
   * @param {(on: boolean) => void} o.onChange our camera is (not) published now
   * @param {(text: string) => void} o.onError
   */
  constructor({ container, onChange, onError }) {
    this.container = container;
    this.onChange = onChange;
    this.onError = onError;
    /** Our own camera, while on: {signaling, publisher, tracks, tile, room, live}. */
    this.own = null;
    /** memberId → {signaling, subscriber, tile} for other members' cameras. */
    this.remote = new Map();
  }

  /** Our camera is on (wanted, even while (re)connecting). */
  get on() {
    return this.own !== null;
  }

  hasTiles() {
    return this.own !== null || this.remote.size > 0;
  }

  async toggle({ party, memberId, name }) {
    if (this.own) {
      this.#stopOwn();
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24 } },
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
    } catch (err) {
      this.onError(`Could not open the camera: ${err.message}`);
      this.onChange(false);
      return;
    }
    const room = cameraRoom(party, memberId);
    const signaling = new Signaling();
    const publisher = new Publisher(signaling, 'party-camera');
    const tile = this.#tile('You', true);
    tile.video.srcObject = stream;
    tile.video.play().catch(() => {});
    const own = { signaling, publisher, stream, tile, room, live: false, failures: 0 };
    this.own = own;
    const keyItem = `marquee.hostKey.${room}`;

    signaling.addEventListener('open', () => {
      signaling.join({ role: 'host', room, name, hostKey: sessionStorage.getItem(keyItem) || undefined });
    });
    signaling.addEventListener('joined', (e) => {
      if (e.detail.hostKey) sessionStorage.setItem(keyItem, e.detail.hostKey);
      const [audio] = stream.getAudioTracks();
      const [video] = stream.getVideoTracks();
      publisher.publish({ audio: audio ?? null, video: video ?? null })
        .catch((err) => this.onError(`Could not publish the camera: ${err.message}`));
      own.live = true;
      this.onChange(true);
    });
    signaling.addEventListener('answer', (e) => publisher.handleAnswer(e.detail.sdp));
    signaling.addEventListener('close', () => publisher.close());
    publisher.addEventListener('statechange', (e) => {
      if (e.detail.state === 'connected') own.failures = 0;
    });
    publisher.addEventListener('failed', (e) => {
      if (this.own !== own) return;
      publisher.close();
      signaling.restart(Math.min(RETRY_MAX_MS, RETRY_START_MS * 2 ** own.failures++));
      if (e.detail.kind !== 'connection') this.onError(e.detail.reason);
    });
    signaling.addEventListener('error', (e) => {
      const { code, message } = e.detail;
      if (PUBLISH_FATAL.has(code)) {
        this.onError(`Camera stopped: ${message} (${code})`);
        this.#stopOwn();
      } else {
        this.onError(`Camera: ${message} (${code})`);
      }
    });
    signaling.start();
  }

  /** After the party socket (re)joined: the server may have a fresh presence for us. */
  rejoin() {
    if (this.own?.live) this.onChange(true);
  }

  /** The party's members changed: a tile per other member with a camera. */
  setMembers(members, myId, party) {
    const wanted = new Map();
    for (const m of members) {
      if (m.camera && m.online !== false && m.memberId !== myId) wanted.set(m.memberId, m);
    }
    for (const [id, cam] of this.remote) {
      if (!wanted.has(id)) {
        this.#closeRemote(cam);
        this.remote.delete(id);
      }
    }
    for (const [id, m] of wanted) {
      const cam = this.remote.get(id);
      if (cam) cam.tile.name.textContent = m.name || 'Guest';
      else this.remote.set(id, this.#watch(cameraRoom(party, id), m.name || 'Guest'));
    }
  }

  /** Everything off (leaving the party). */
  stop() {
    this.#stopOwn(false);
    for (const cam of this.remote.values()) this.#closeRemote(cam);
    this.remote.clear();
  }

  #watch(room, name) {
    const signaling = new Signaling();
    const subscriber = new Subscriber(signaling, 'party-camera-view');
    const tile = this.#tile(name, false);
    const cam = { signaling, subscriber, tile, failures: 0 };
    signaling.addEventListener('open', () => {
      signaling.join({ role: 'viewer', room, name: localStorage.getItem('marquee.name') || 'Viewer' });
    });
    signaling.addEventListener('offer', (e) => subscriber.handleOffer(e.detail.sdp));
    signaling.addEventListener('close', () => subscriber.close());
    signaling.addEventListener('error', (e) => {
      const { code } = e.detail;
      if (code === 'room_not_found') {
        subscriber.close();
        signaling.restart(ROOM_NOT_FOUND_RETRY_MS);
      } else {
        console.warn('[party-camera-view]', code, e.detail.message);
      }
    });
    subscriber.addEventListener('statechange', (e) => {
      if (e.detail.state === 'connected') cam.failures = 0;
    });
    subscriber.addEventListener('failed', () => {
      subscriber.close();
      signaling.restart(Math.min(RETRY_MAX_MS, RETRY_START_MS * 2 ** cam.failures++));
    });
    subscriber.addEventListener('stream', (e) => {
      const v = tile.video;
      v.srcObject = e.detail.stream;
      if (!e.detail.stream) return;
      // Voices should be heard; without a gesture yet, play muted until the tile is tapped.
      v.play().catch(() => {
        v.muted = true;
        tile.root.classList.add('muted');
        v.play().catch(() => {});
      });
    });
    signaling.start();
    return cam;
  }

  #closeRemote(cam) {
    cam.signaling.leave();
    cam.signaling.stop();
    cam.subscriber.close();
    cam.tile.root.remove();
  }

  #stopOwn(announce = true) {
    const own = this.own;
    if (!own) return;
    this.own = null;
    own.signaling.leave();
    own.signaling.stop();
    own.publisher.close();
    for (const t of own.stream.getTracks()) t.stop();
    own.tile.root.remove();
    if (announce) this.onChange(false);
  }

  #tile(name, self) {
    const root = document.createElement('figure');
    root.className = 'camera-tile';
    const video = document.createElement('video');
    video.playsInline = true;
    video.autoplay = true;
    video.muted = self; // never hear yourself
    const label = document.createElement('figcaption');
    label.className = 'camera-name';
    label.textContent = name;
    root.append(video, label);
    if (!self) {
      root.addEventListener('click', () => {
        video.muted = false;
        root.classList.remove('muted');
        video.play().catch(() => {});
      });
    }
    if (self) this.container.prepend(root);
    else this.container.append(root);
    return { root, video, name: label };
  }
}
